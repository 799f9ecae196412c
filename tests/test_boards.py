"""Board definitions, the emulated boards' runtimes (``make boards``) and the minimal headers
the RISC-V runtime build relies on. The RPC harness itself is in test_rpc.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require_tool

from tvm_intq.cli import main
from tvm_intq.errors import IntqError
from tvm_intq.targets import TARGETS
from tvm_intq.targets.board import BoardSpec, boards_build_dir
from tvm_intq.targets.boards import BOARDS, board_for_key, get_board
from tvm_intq.targets.rpc import check_target_for_key, elf_machine

pytestmark = pytest.mark.integration  # whole models, boards or processes

ROOT = Path(__file__).resolve().parents[1]
BOARDS_SRC = ROOT / "targets" / "boards"
EMULATED = [b for b in BOARDS.values() if b.emulated]


def require_built(board: BoardSpec) -> None:
    """Skip locally, fail under CI=true, when `make boards` has not built ``board``."""
    try:
        board.check_runnable()
    except IntqError as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{err}; under CI=true `make test` builds the boards first")
        pytest.skip(str(err))


# ---------------------------------------------------------------- definitions


def test_every_board_file_defines_a_board_for_a_known_target():
    assert {"aarch64-emu", "riscv64-emu"} <= set(BOARDS)
    files = {p.stem for p in BOARDS_SRC.glob("*.py") if p.stem != "__init__"}
    assert len(files) == len(BOARDS), "each board file defines exactly one BOARD"
    for name, board in BOARDS.items():
        assert board.name == name
        assert board.target in TARGETS, f"{name}: unknown target {board.target}"
        assert board_for_key(board.key) is board
        assert board.description
    assert len({b.key for b in BOARDS.values()}) == len(BOARDS), "RPC keys are unique"


def test_emulated_boards_name_their_build_script_and_emulator():
    for board in EMULATED:
        assert (BOARDS_SRC / board.emulator.build_script).is_file()
        assert board.emulator.qemu.startswith("qemu-")
        assert "qemu-user" in board.emulator.apt_packages
    rv = get_board("riscv64-emu")
    assert "v=true" in " ".join(rv.emulator.qemu_args) and rv.emulator.min_qemu >= (8, 0)
    assert get_board("aarch64-emu").elf_machine == 183 and rv.elf_machine == 243


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(IntqError, match="aarch64-emu"):
        get_board("no-such-board")
    assert board_for_key("no-such-key") is None


def test_emulated_board_refuses_a_target_whose_features_its_core_lacks():
    # each aarch64 board emulates its target's core (aarch64-emu: Neoverse-N1, no i8mm), so an
    # i8mm library is refused before anything is compiled, with the key that runs it
    check_target_for_key(TARGETS["aarch64"], "aarch64-emu")
    check_target_for_key(TARGETS["aarch64"], "aarch64-i8mm-emu")  # an N2 runs N1 code
    check_target_for_key(TARGETS["aarch64-i8mm"], "aarch64-i8mm-emu")
    check_target_for_key(TARGETS["riscv64"], "riscv64-emu-vlen256")
    with pytest.raises(IntqError, match=r"'aarch64-emu'.* lack \+i8mm .*--key aarch64-i8mm-emu"):
        check_target_for_key(TARGETS["aarch64-i8mm"], "aarch64-emu")


def test_real_board_cannot_be_started_here_and_says_what_to_run():
    with pytest.raises(
        IntqError, match=r"real board.*tvm\.exec\.rpc_server --tracker .* --key rk3588"
    ):
        get_board("rk3588").check_runnable()


def test_unbuilt_board_says_make_boards(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_INTQ_BOARDS_DIR", str(tmp_path))
    board = get_board("aarch64-emu")
    if board.emulator.qemu_path() is None:
        pytest.skip("no qemu-aarch64 at all")
    with pytest.raises(IntqError, match="make boards"):
        board.check_runnable()


def test_too_old_qemu_is_refused_with_the_reason(monkeypatch):
    board = get_board("riscv64-emu")
    emu = dataclasses.replace(board.emulator, min_qemu=(99, 0))
    monkeypatch.setattr(type(emu), "qemu_version", lambda self: (7, 2))
    monkeypatch.setattr(type(emu), "qemu_path", lambda self: "/usr/bin/qemu-riscv64")
    with pytest.raises(IntqError, match=r"QEMU 7\.2.*needs QEMU >= 99\.0.*make boards"):
        dataclasses.replace(board, emulator=emu).check_runnable()


def test_boards_command_lists_every_board(capsys):
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    for board in BOARDS.values():
        assert board.name in out and board.key in out
    assert "rpc_server --tracker" in out


# ---------------------------------------------------------------- built runtimes


@pytest.mark.parametrize("board", EMULATED, ids=lambda b: b.name)
def test_runtime_is_built_for_the_board_architecture(board):
    require_built(board)
    root = board.runtime_dir()
    files = [
        board.server_binary(),
        root / "lib" / "libtvm_runtime.so",
        root / "lib" / "libtvm_ffi.so",
    ]
    for f in files:
        assert f.is_file(), f"{f} missing"
        assert elf_machine(f) == board.elf_machine, f"{f.name} is not a {board.target} ELF"
    assert root.resolve().is_relative_to(boards_build_dir().resolve())


@pytest.mark.parametrize("board", EMULATED, ids=lambda b: b.name)
def test_board_server_starts_under_qemu(board):
    """The dynamic loader finds libtvm_runtime/libtvm_ffi under qemu and main runs (usage)."""
    require_built(board)
    cmd = board.command(0, "/tmp")[:-2]  # no SOCKFD/WORKDIR: prints its usage
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "usage:" in run.stderr and "SOCKFD WORKDIR" in run.stderr


def test_riscv_qemu_is_new_enough_for_rvv_code():
    board = get_board("riscv64-emu")
    require_built(board)
    assert board.emulator.qemu_version() >= (8, 0)


# ---------------------------------------------------------------- compat headers


COMPAT_TEST = r"""
// Behaviour the TVM runtime relies on: ring buffer FIFO order (wrap-around, growth, partial
// callback reads/writes), arena alignment and reuse, string helpers, base64 round trips.
#include <deque>
#include <random>
#include <string>
#include <cstdio>
#include <cstring>
#include "support/ring_buffer.h"
#include "support/arena.h"
#include "support/utils.h"
#include "support/base64.h"

using namespace tvm::support;
#define EXPECT(c) do { if (!(c)) { std::printf("FAIL line %d: %s\n", __LINE__, #c); return 1; } } while (0)

struct Str : Stream {
  std::string s; size_t pos = 0;
  size_t Write(const void* p, size_t n) override { s.append((const char*)p, n); return n; }
  size_t Read(void* p, size_t n) override { n = std::min(n, s.size() - pos); std::memcpy(p, s.data() + pos, n); pos += n; return n; }
};

int main() {
  std::mt19937 rng(7);
  RingBuffer rb; std::deque<char> ref; char next = 0; bool bad = false;
  for (int step = 0; step < 20000; ++step) {
    int op = rng() % 4; size_t n = rng() % (step % 500 == 0 ? 70000 : 3000);
    if (op == 0) { std::string d(n, 0); for (auto& c : d) { c = next++; ref.push_back(c); } rb.Write(d.data(), n); }
    else if (op == 1) { n = std::min(n, ref.size()); std::string d(n, 0); rb.Read(&d[0], n);
      for (char c : d) { EXPECT(c == ref.front()); ref.pop_front(); } }
    else if (op == 2) { size_t got = rb.WriteWithCallback([&](void* p, size_t m) { size_t k = std::min(m, (size_t)rng() % 1000);
        for (size_t i = 0; i < k; ++i) { ((char*)p)[i] = next; ref.push_back(next++); } return k; }, n);
      EXPECT(got <= n); }
    else { rb.ReadWithCallback([&](const void* p, size_t m) { size_t k = m ? rng() % (m + 1) : 0;
        for (size_t i = 0; i < k; ++i) { if (((const char*)p)[i] != ref.front()) bad = true; ref.pop_front(); } return k; }, n); }
    EXPECT(!bad);
    EXPECT(rb.bytes_available() == ref.size());
    if (op == 1 && rng() % 7 == 0) rb.Reserve(rng() % 100);  // shrink requests keep the content
  }
  Arena arena;
  for (int round = 0; round < 3; ++round) {
    double* a = arena.allocate_<double>(3); char* b = arena.allocate_<char>(1); int64_t* c = arena.allocate_<int64_t>(100000);
    EXPECT(((uintptr_t)a % alignof(double)) == 0 && ((uintptr_t)c % alignof(int64_t)) == 0);
    a[2] = 1; *b = 2; c[99999] = 3; EXPECT(a[2] == 1 && *b == 2 && c[99999] == 3);
    arena.RecycleAll();
  }
  EXPECT(IsNumber("0123") && !IsNumber("") && !IsNumber("12a"));
  EXPECT(StartsWith(std::string("RPCSessionTimeoutError: x"), "RPCSessionTimeoutError: ") && !StartsWith(std::string("RPC"), "RPCSession"));
  for (size_t n = 0; n < 40; ++n) {
    std::string data; for (size_t i = 0; i < n; ++i) data.push_back((char)(rng() & 0xff));
    Str text; Base64OutStream out(&text); out.Write(data.data(), n); out.Finish();
    EXPECT(text.s.size() == (n + 2) / 3 * 4);
    Base64InStream in(&text); in.InitPosition(); std::string back(n + 5, 0);
    EXPECT(in.Read(&back[0], n + 5) == n); back.resize(n); EXPECT(back == data);
  }
  Str t2; Base64OutStream o2(&t2); o2.Write("Man", 3); o2.Write("a", 1); o2.Finish(); EXPECT(t2.s == "TWFuYQ==");
  std::printf("ok\n");
  return 0;
}
"""

IO_STUB = r"""
// Test stand-in for tvm/support/io.h (the build takes the real one from apache-tvm-tirx).
#pragma once
#include <cstddef>
namespace tvm { namespace support {
class Stream { public:
  virtual size_t Read(void* ptr, size_t size) = 0;
  virtual size_t Write(const void* ptr, size_t size) = 0;
  virtual ~Stream() = default; };
}}
"""


def test_compat_headers_behave_as_the_runtime_needs(tmp_path):
    cxx = require_tool("g++")
    import tvm_ffi

    ffi = Path(tvm_ffi.__file__).parent
    (tmp_path / "tvm" / "support").mkdir(parents=True)
    (tmp_path / "tvm" / "support" / "io.h").write_text(textwrap.dedent(IO_STUB))
    (tmp_path / "t.cc").write_text(COMPAT_TEST)
    exe = tmp_path / "t"
    build = subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O1",
            f"-I{BOARDS_SRC / 'compat' / 'src'}",
            f"-I{tmp_path}",
            f"-I{ffi / 'include'}",
            str(tmp_path / "t.cc"),
            "-o",
            str(exe),
            f"-L{ffi / 'lib'}",
            "-ltvm_ffi",
            f"-Wl,-rpath,{ffi / 'lib'}",
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_build_scripts_are_no_ops_when_up_to_date():
    """`make test` runs them every time: with the boards built they return at once."""
    for board in EMULATED:
        require_built(board)
    script = BOARDS_SRC / "build_aarch64_emu.sh"
    run = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PY": sys.executable},
    )
    assert run.returncode == 0, run.stderr
    assert "up to date" in run.stderr or "reused" in run.stderr
