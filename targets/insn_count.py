"""Instructions executed on an emulated board, counted by QEMU: a deterministic figure where
the emulator's wall time means nothing (see ../shared/TVM-0.27-NOTES.md, "Emulated time is
not hardware time").

    executed_instructions("m.so", "aarch64-emu", [x])         -> instructions of one call of main
    run_counted("k.so", "riscv64-emu", [a, b, c], function="main", blocks=True)

How: ``make boards`` builds (``targets/boards/build_insn_count.sh``) a qemu-user with plugin
support, our counting plugin (``insn_count_plugin.c``) and a runner per board
(``count_runner.cc``). The runner loads the library on the emulated board (the board's own TVM
runtime, as over RPC), calls one function ``calls`` times - ``main`` of a Relax VM library, or a
TIR kernel called directly with its buffers (outputs included), as MetaSchedule builds one -
and marks the start and end of each call, so process start-up and library loading are not
counted. TVM runs single-threaded: idle worker threads would spin a varying number of
instructions.

A run is reproducible to the instruction: QEMU places the guest's memory itself
(:data:`GUEST_ADDRESS_SPACE`), TVM is single-threaded, symbols are bound when the library loads
(``LD_BIND_NOW``). Calls within a run differ a little: the first ones of a Relax VM fill its
memory pool and the C library's allocator caches, and the allocator keeps settling for a few
calls (measured, the bundled int8 model on aarch64: 1615799, 1608512, 1607165, 1607165,
1607211, then 1607001 for every later call - the same whatever the input).
:func:`executed_instructions` reports the median of the calls after :data:`WARMUP_CALLS` and
checks that they agree within :data:`WARM_SPREAD`.

Cost: one emulator process, ~0.3 s for a small kernel (start-up and loading the TVM runtime),
plus the calls themselves under qemu; the block profile adds a callback per block executed.
"""

from __future__ import annotations

import bisect
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_intq.errors import IntqError
from tvm_intq.targets.board import BoardSpec, boards_build_dir

#: Calls before the one :func:`executed_instructions` reports (see the module docstring).
WARMUP_CALLS = 3
#: How much (relative) the calls after the warm-up may differ: the allocator's settling is a
#: few hundred instructions, and tuned kernels that allocate workspace on every call take the C
#: allocator down paths that differ by up to ~0.5 % (measured: the bundled model's tuned RVV
#: kernels); more means something else varies (threads, data-dependent code).
WARM_SPREAD = 1e-2
#: qemu-user ``-R``: a reserved guest address space, in which QEMU itself places every mapping
#: of the guest. Without it the guest's mappings are wherever the host's mmap puts them, which
#: varies from run to run (address randomization, QEMU's own threads allocating), and so do
#: the instructions of address-dependent code (alignment paths of memcpy, pointer hashing).
GUEST_ADDRESS_SPACE = "8G"


@dataclass(frozen=True)
class Execution:
    """What one counted run on an emulated board saw."""

    per_call: tuple[int, ...]  # guest instructions executed by each call, in order
    load_base: int  # guest address the library was loaded at
    #: with ``blocks=True``: ``{(offset in the library, instructions): executions}`` summed over
    #: all calls, for the straight-line blocks (QEMU translation blocks) inside the library.
    blocks: dict[tuple[int, int], int] | None = None
    #: with ``blocks=True``: every block the calls ran, in any mapped file (the TVM runtime,
    #: libc, ... and the library): ``{path: {(ELF address, instructions): executions}}``
    #: summed over all calls (:func:`file_blocks`)
    file_blocks: dict[str, dict[tuple[int, int], int]] | None = None
    #: with ``blocks=True``: instructions executed outside every mapped file (QEMU's vdso and
    #: signal trampolines), summed over all calls
    unmapped: int = 0

    def warm_instructions(self, warmup: int, what: str = "the library") -> int:
        """Instructions of the median call after the first ``warmup`` (one call's count, the
        same on every run); :class:`IntqError` (``what`` names the run) unless there are at
        least two such calls and they agree within :data:`WARM_SPREAD`."""
        warm = self.per_call[warmup:]
        if len(warm) < 2 or max(warm) - min(warm) > WARM_SPREAD * max(warm):
            raise IntqError(
                f"{what}: instructions per call {list(self.per_call)} do not settle "
                f"after {warmup} warm-up calls (within {WARM_SPREAD:g})"
            )
        return sorted(warm)[len(warm) // 2]


def counting_tools(board: BoardSpec) -> tuple[Path, Path, Path]:
    """(qemu with plugins, the plugin, the runner) for ``board``; :class:`IntqError` naming
    what to build when one is missing."""
    board.check_runnable()
    build = boards_build_dir()
    paths = (
        build / "qemu-plugins" / "bin" / board.emulator.qemu,
        build / "insn-count" / "lib" / "libinsn_count.so",
        # one runner per board runtime (riscv64-emu-vlen256 runs riscv64-emu's)
        build / "insn-count" / "bin" / f"count_runner-{board.runtime_dir().name}",
    )
    for p in paths:
        if not p.is_file():
            raise IntqError(
                f"{p} missing (instruction counting for board '{board.name}'): run "
                "`make boards` (targets/boards/build_insn_count.sh)"
            )
    return paths


def _board(board) -> BoardSpec:
    if isinstance(board, BoardSpec):
        return board
    from tvm_intq.targets.boards import get_board

    return get_board(board)


def _arg_spec(a: np.ndarray, folder: Path, i: int) -> str:
    a = np.asarray(a)  # (not ascontiguousarray: it makes a 0-d array 1-d)
    path = folder / f"arg{i}.bin"
    path.write_bytes(a.tobytes())
    shape = "x".join(str(d) for d in a.shape)  # "" = a 0-d tensor
    return f"{a.dtype}:{shape}={path}"


def run_counted(
    library,
    board,
    args,
    *,
    function: str = "main",
    calls: int = 3,
    blocks: bool = False,
    timeout: float = 1800.0,
) -> Execution:
    """Call ``function`` of ``library`` ``calls`` times on emulated ``board`` (a
    :class:`BoardSpec` or its name) with ``args`` (numpy arrays, in parameter order), counting
    instructions; with ``blocks`` also which blocks of the library ran how often (slower: one
    callback per block executed)."""
    board = _board(board)
    if calls < 1:
        raise IntqError("calls must be >= 1")
    qemu, plugin, runner = counting_tools(board)
    library = Path(library).resolve()
    emu = board.emulator
    with tempfile.TemporaryDirectory(prefix="tvm-intq-count-") as tmp:
        tmp = Path(tmp)
        plugin_arg = f"{plugin},out={tmp / 'counts'}" + (
            f",blocks={tmp / 'blocks'}" if blocks else ""
        )
        cmd = [
            str(qemu),
            "-R",
            GUEST_ADDRESS_SPACE,
            "-L",
            emu.sysroot,
            *emu.qemu_args,
            "-E",
            f"LD_LIBRARY_PATH={board.runtime_dir() / 'lib'}",
            "-E",
            "LD_BIND_NOW=1",
            "-E",
            "TVM_NUM_THREADS=1",
            "-plugin",
            plugin_arg,
            str(runner),
            str(library),
            function,
            str(calls),
            *(_arg_spec(a, tmp, i) for i, a in enumerate(args)),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise IntqError(
                f"{library.name} on {board.name} (counting run) failed: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        base = int(
            next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("base ")),
            16,
        )
        files = mapped_files(proc.stdout)
        marks = [int(v) for v in (tmp / "counts").read_text().split()]
        # marks: before call 1, after each call, at exit
        per_call = tuple(b - a for a, b in zip(marks[:calls], marks[1 : calls + 1]))
        profile = _library_blocks(tmp / "blocks", base, library) if blocks else None
        by_file, unmapped = file_blocks(tmp / "blocks", files) if blocks else (None, 0)
    return Execution(per_call, base, profile, by_file, unmapped)


#: ELF64 program header: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
_PHDR = struct.Struct("<IIQQQQQQ")
_PT_LOAD = 1
_PAGE = 0xFFF


def load_segments(path) -> list[tuple[int, int, int, int]]:
    """``[(vaddr, file offset, file size, memory size)]`` of the PT_LOAD segments of the ELF64
    little-endian file ``path`` (aarch64, riscv64, x86-64 shared libraries and programs)."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise IntqError(f"{path} is not a little-endian ELF64 file")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    out = []
    for i in range(phnum):
        p_type, _, offset, vaddr, _, filesz, memsz, _ = _PHDR.unpack_from(
            data, phoff + i * phentsize
        )
        if p_type == _PT_LOAD:
            out.append((vaddr, offset, filesz, memsz))
    return out


def mapped_files(stdout: str) -> dict[str, int]:
    """``{path: lowest guest address}`` from the ``map 0x... PATH`` lines the runners print."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("map "):
            _, start, path = line.split(" ", 2)
            out[path] = int(start, 16)
    return out


def file_blocks(path: Path, files: dict[str, int]):
    """The plugin's block profile ``path`` by mapped ELF file: ``({file: {(ELF address,
    instructions): executions}}, instructions executed outside every file)``. A guest address
    ``g`` in a file loaded at ``base`` (its lowest mapping) is ELF address ``g - base +`` the
    page of its first loaded segment (0 for shared libraries)."""
    ranges = []
    for file, base in files.items():
        try:
            segments = load_segments(file)
        except (IntqError, OSError):
            continue  # not an ELF file (locale archives, caches)
        if segments:
            first = min(s[0] for s in segments) & ~_PAGE
            ranges.append((base, base + max(s[0] + s[3] for s in segments) - first, first, file))
    ranges.sort()
    starts = [r[0] for r in ranges]
    out: dict[str, dict[tuple[int, int], int]] = {}
    unmapped = 0
    for line in path.read_text().splitlines():
        vaddr, n, executions = line.split()
        guest, n, executions = int(vaddr, 16), int(n), int(executions)
        i = bisect.bisect_right(starts, guest) - 1
        if i < 0 or guest >= ranges[i][1]:
            unmapped += n * executions
            continue
        start, _, first, file = ranges[i]
        blocks = out.setdefault(file, {})
        key = (guest - start + first, n)
        blocks[key] = blocks.get(key, 0) + executions
    return out, unmapped


def _library_blocks(path: Path, base: int, library: Path) -> dict[tuple[int, int], int]:
    size = library.stat().st_size  # the text of a shared library lies within its file size
    out: dict[tuple[int, int], int] = {}
    for line in path.read_text().splitlines():
        vaddr, n, executions = line.split()
        offset = int(vaddr, 16) - base
        if 0 <= offset < size:
            key = (offset, int(n))
            out[key] = out.get(key, 0) + int(executions)
    return out


def executed_instructions(
    library, board, args, *, function: str = "main", warmup: int = WARMUP_CALLS
) -> int:
    """Guest instructions one call of ``function`` executes on emulated ``board`` once warm
    (see :func:`run_counted` for the arguments and the module docstring for what "warm" means):
    the median of two calls after ``warmup`` calls (:meth:`Execution.warm_instructions`)."""
    board = _board(board)
    run = run_counted(library, board, args, function=function, calls=warmup + 2)
    return run.warm_instructions(warmup, f"{Path(library).name} on {board.name}")
