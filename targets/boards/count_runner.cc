// tvm-intq count runner: calls one function of a compiled library CALLS times on an emulated
// board, between marker system calls that the instruction-count plugin (insn_count_plugin.c)
// records, so the host reads instructions per call without process start-up or library loading.
//
//   count_runner LIB FUNC CALLS ARG...     ARG = DTYPE:D1xD2x...[=FILE]  (FILE: raw bytes;
//                                                                          zeros without it)
//
// A Relax VM library (has vm_load_executable) runs FUNC of the VM (CPU, pooled allocator, as
// tvm.relax.VirtualMachine does) on the ARGs; any other library (a TIR kernel, as MetaSchedule
// builds one) is called directly with the ARGs, outputs included. Prints the load address of
// LIB ("base 0x...") so the host can map executed blocks back into the library's disassembly,
// and of every other mapped file ("map 0x... PATH": the TVM runtime, libc, ...).
// Runs single-threaded (the host sets TVM_NUM_THREADS=1): idle worker threads would spin a
// varying number of instructions.
#include <dlpack/dlpack.h>
#include <sys/syscall.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using tvm::ffi::Any;
using tvm::ffi::AnyView;
using tvm::ffi::Function;
using tvm::ffi::Module;
using tvm::ffi::Tensor;

constexpr uint64_t kMarkerMagic = 0x74766d2d696e7471ULL;  // must match insn_count_plugin.c

void Marker() { syscall(SYS_getpid, kMarkerMagic); }

Function Global(const char* name) {
  auto f = Function::GetGlobal(name);
  if (!f.has_value()) throw std::runtime_error(std::string("runtime lacks ") + name);
  return *f;
}

Tensor MakeArg(const std::string& spec) {
  size_t colon = spec.find(':');
  size_t eq = spec.find('=');
  if (colon == std::string::npos) throw std::runtime_error("bad argument '" + spec + "'");
  std::string shape_text = spec.substr(colon + 1, eq == std::string::npos ? std::string::npos : eq - colon - 1);
  std::vector<int64_t> shape;
  std::stringstream dims(shape_text);
  for (std::string d; std::getline(dims, d, 'x');) shape.push_back(std::stoll(d));
  DLDataType dtype = tvm::ffi::StringToDLDataType(spec.substr(0, colon));
  Tensor t = Global("runtime.TVMTensorAllocWithScope")(tvm::ffi::Shape(shape), dtype,
                                                       DLDevice{kDLCPU, 0}, Any())
                 .cast<Tensor>();
  size_t bytes = (dtype.bits * dtype.lanes + 7) / 8;
  for (int64_t d : shape) bytes *= d;
  std::memset(t.data_ptr(), 0, bytes);
  if (eq != std::string::npos) {
    std::ifstream in(spec.substr(eq + 1), std::ios::binary);
    if (!in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(bytes)))
      throw std::runtime_error("cannot read " + std::to_string(bytes) + " bytes from " + spec.substr(eq + 1));
  }
  return t;
}

// Lowest address each mapped file is at (its ELF addresses are offsets from it), from
// /proc/self/maps, which qemu-user fills with guest addresses; by path.
std::map<std::string, unsigned long> MappedFiles() {
  std::ifstream maps("/proc/self/maps");
  std::map<std::string, unsigned long> out;
  for (std::string line; std::getline(maps, line);) {
    size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    std::string path = line.substr(slash);
    unsigned long start = std::stoul(line.substr(0, line.find('-')), nullptr, 16);
    auto it = out.find(path);
    if (it == out.end() || start < it->second) out[path] = start;
  }
  return out;
}

unsigned long LoadBase(const std::string& lib, const std::map<std::string, unsigned long>& files) {
  char real[PATH_MAX];
  if (!realpath(lib.c_str(), real)) return 0;
  auto it = files.find(real);
  return it == files.end() ? 0 : it->second;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s LIB FUNC CALLS [DTYPE:D1xD2x...[=FILE]]...\n", argv[0]);
    return 2;
  }
  try {
    std::string lib = argv[1], func = argv[2];
    int calls = std::atoi(argv[3]);
    Module mod = Module::LoadFromFile(lib);
    Function f;
    if (auto load = mod->GetFunction("vm_load_executable", true)) {
      Module vm = (*load)().cast<Module>();
      constexpr int kPooledAllocator = 2;
      (*vm->GetFunction("vm_initialization", false))(static_cast<int>(kDLCPU), 0, kPooledAllocator);
      auto entry = vm->GetFunction(func, false);
      if (!entry.has_value()) throw std::runtime_error("the VM has no function " + func);
      f = *entry;
    } else {
      auto entry = mod->GetFunction(func, true);
      if (!entry.has_value()) throw std::runtime_error(lib + " has no function " + func);
      f = *entry;
    }
    std::vector<Tensor> tensors;
    for (int i = 4; i < argc; i++) tensors.push_back(MakeArg(argv[i]));
    std::vector<AnyView> args(tensors.begin(), tensors.end());
    // every mapped file too ("map 0x... PATH"), for a block profile of all the code a call runs
    auto files = MappedFiles();
    for (const auto& [path, start] : files) std::printf("map 0x%lx %s\n", start, path.c_str());
    std::printf("base 0x%lx\n", LoadBase(lib, files));
    std::fflush(stdout);
    Marker();
    for (int i = 0; i < calls; i++) {
      tvm::ffi::Any ret;
      f.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
      Marker();
    }
  } catch (const std::exception& err) {
    std::fprintf(stderr, "count_runner: %s\n", err.what());
    return 1;
  }
  return 0;
}
