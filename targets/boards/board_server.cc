// tvm-intq board server: serves TVM RPC on one connected socket, with no Python on the board.
//
//   tvm_board_server SOCKFD WORKDIR
//
// The host-side board agent (tvm_intq/targets/rpc.py) registers the board with the tracker,
// accepts a client, does the RPC handshake (magic + key) and starts this program with the
// accepted socket as SOCKFD (inherited) and a fresh, empty WORKDIR; under qemu-user the
// inherited descriptor works as on hardware. One process serves one session, then exits.
//
// Everything RPC is TVM's own runtime: this program only registers the file-system half of
// the server environment that TVM's Python server registers in Python (workpath, load_module,
// listdir), then runs the runtime's "rpc.ServerLoop" (rpc_socket_impl.cc) on the socket.
// upload/download/remove come from the runtime's rpc_server_env.cc, time_evaluator from
// rpc_module.cc, the Relax VM from vm/*.cc: all in libtvm_runtime.so.
#include <dirent.h>
#include <dlpack/dlpack.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace {

using tvm::ffi::Function;
using tvm::ffi::Module;
using tvm::ffi::String;

std::string Join(const std::string& dir, const std::string& name) {
  // Remote names are relative to the session's folder; refuse to leave it.
  if (name.empty() || name[0] == '/' || name.find("..") != std::string::npos) {
    throw std::runtime_error("tvm-intq board: bad file name '" + name + "'");
  }
  return dir + "/" + name;
}

void RegisterServerEnv(const std::string& workdir) {
  Function::SetGlobal(
      "tvm.rpc.server.workpath",
      Function::FromTyped([workdir](String name) -> String { return Join(workdir, name); }),
      true);
  Function::SetGlobal(
      "tvm.rpc.server.load_module",
      Function::FromTyped([workdir](String name) -> Module {
        std::string path = Join(workdir, name);
        std::fprintf(stderr, "tvm-intq board: load_module %s\n", path.c_str());
        return Module::LoadFromFile(path);
      }),
      true);
  Function::SetGlobal(
      "tvm.rpc.server.listdir",
      Function::FromTyped([workdir](String name) -> String {
        std::string path = name.empty() || std::string(name) == "." ? workdir : Join(workdir, name);
        std::string out;
        if (DIR* d = opendir(path.c_str())) {
          while (dirent* e = readdir(d)) {
            std::string entry = e->d_name;
            if (entry == "." || entry == "..") continue;
            if (!out.empty()) out += ",";
            out += entry;
          }
          closedir(d);
        }
        return out;
      }),
      true);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s SOCKFD WORKDIR\n", argv[0]);
    return 2;
  }
  int sockfd = std::atoi(argv[1]);
  try {
    RegisterServerEnv(argv[2]);
    auto loop = Function::GetGlobal("rpc.ServerLoop");
    if (!loop.has_value()) {
      std::fprintf(stderr, "tvm-intq board: libtvm_runtime has no rpc.ServerLoop (built without RPC?)\n");
      return 3;
    }
    (*loop)(static_cast<int64_t>(sockfd));
  } catch (const std::exception& err) {
    std::fprintf(stderr, "tvm-intq board: %s\n", err.what());
    return 1;
  }
  return 0;
}
