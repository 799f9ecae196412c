"""What ARM users run instead of us, counted on the same emulated core as our libraries: ONNX
Runtime (MLAS int8 and fp32 kernels) and LiteRT (XNNPACK), from their official aarch64 wheels,
in an aarch64 Python under the same qemu-aarch64 and counting plugin that
:mod:`~tvm_intq.targets.insn_count` uses for our libraries.

    peer_instructions("m.int8.onnx", [x], "onnxruntime", cpu="neoverse-n1").instructions
    count = peer_instructions("m.tflite", [x], "litert", blocks=True)
    peer_mca_cycles(count, "neoverse-n1")        -> {"total": ..., "modelled": ..., ...}
    peer_figures("m.onnx", [x], "onnxruntime", target="aarch64")   -> plain data for reports

How: ``make boards`` builds (``targets/boards/build_peers.sh``) an aarch64 python3.11 sysroot
from Debian's arm64 packages and unpacks the aarch64 wheels of onnxruntime, numpy and
ai-edge-litert beside it. ``targets/boards/peers/peer_runner.py`` runs in that Python: it loads the
model (ONNX Runtime: CPU provider, every graph optimization, 1 thread; LiteRT: the Interpreter
with its default XNNPACK delegate, 1 thread), runs :data:`WARMUP_CALLS` inferences, then makes
the plugin's marker system call around each of ``calls`` counted inferences, as count_runner
does around a call of our library. An inference is what a Python user writes
(``session.run(None, feeds)``; ``set_tensor``/``invoke``/``get_tensor``), so the Python
statements of the call are in the count; the markers' own cost (a ctypes call, measured on
empty marked regions in the same run, ~1-2 thousand instructions) is taken off.

The core: a peer's kernels are picked at run time from the CPU's features (MLAS and
XNNPACK/KleidiAI take SVE/SME kernels on ``-cpu max``, where one instruction does far more
work), so a count describes one core: :func:`peer_cpu` gives the one the target's emulated
board runs our libraries on (Neoverse-N1 for ``aarch64``, N2 for ``aarch64-i8mm``).

Determinism, as for our libraries: QEMU places the guest's memory (``-R``), the guest's
environment is fixed (the host's is not passed on: its size moves the stack),
``PYTHONHASHSEED=0``, ``LD_BIND_NOW=1``, ``OPENBLAS_NUM_THREADS=1`` (numpy's idle OpenBLAS
thread spins a varying number of instructions: measured 2.8 M to 5.2 M per inference without
it), ONNX Runtime's telemetry off, Python's garbage collector off during the counted calls.
Measured on the bundled model: the counted calls of one run differ by up to 0.5 % (the C and
Python allocators' state changes from call to call: LiteRT int8 596,031 to 600,445 over five
calls), the reported median with them; a second run repeats every call's count to the
instruction.

The block profile (``blocks=True``): which straight-line blocks of which loaded file ran how
often from the first marker on (the plugin ignores executions before it: start-up, imports,
session creation, warm-up), per inference. :func:`peer_mca_cycles` weighs llvm-mca's cycles per
block with it; the blocks are read from the files' bytes and disassembled by llvm-mc
(:func:`~tvm_intq.targets.mca.disassemble_blocks`), since the peers' libraries are large and
mostly stripped. It covers everything the inference executes (Python, the runtime, libc,
kernels), where :func:`~tvm_intq.targets.mca.mca_cycles` covers our kernels only.
"""

from __future__ import annotations

import bisect
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvm_intq.errors import IntqError
from tvm_intq.targets.board import boards_build_dir
from tvm_intq.targets.boards import emulated_board
from tvm_intq.targets.insn_count import (
    GUEST_ADDRESS_SPACE,
    WARM_SPREAD,
    WARMUP_CALLS,
    file_blocks,
    mapped_files,
)
from tvm_intq.targets.mca import DOT_MACS, executed_mnemonics, file_blocks_cycles

RUNTIMES = ("onnxruntime", "litert")
#: What each runtime loads (a peer that cannot run a model is left out by the caller).
MODEL_SUFFIXES = {"onnxruntime": (".onnx", ".ort"), "litert": (".tflite",)}
#: Counted inferences per run (after :data:`WARMUP_CALLS` uncounted ones).
CALLS = 5
#: Empty marked regions per run, right before the counted calls: the markers' own cost.
EMPTY_REGIONS = 3


def peers_dir() -> Path:
    """Where ``make boards`` (build_peers.sh) puts the peers' environment."""
    return boards_build_dir() / "peers"


def _tools() -> dict[str, Path]:
    """The paths a counted peer run needs; :class:`IntqError` naming what to build when one
    is missing."""
    build, env = boards_build_dir(), peers_dir()
    tools = {
        "qemu": build / "qemu-plugins" / "bin" / "qemu-aarch64",
        "plugin": build / "insn-count" / "lib" / "libinsn_count.so",
        "sysroot": env / "sysroot",
        "python": env / "sysroot" / "usr" / "bin" / "python3.11",
        "site": env / "site",
        "runner": Path(__file__).resolve().parent / "boards" / "peers" / "peer_runner.py",
    }
    for path in (*tools.values(), env / "site" / "onnxruntime", env / "site" / "ai_edge_litert"):
        if not path.exists():
            raise IntqError(
                f"{path} missing (counting the peers on the emulated ARM core): run "
                "`make boards` (targets/boards/build_peers.sh, build_insn_count.sh)"
            )
    return tools


def peer_cpu(target: str = "aarch64") -> str:
    """The qemu ``-cpu`` of the emulated board that runs ``target``'s libraries: peers are
    counted on the core our libraries are counted on."""
    board = emulated_board(target)
    args = list(board.emulator.qemu_args)
    if board.emulator.qemu != "qemu-aarch64" or "-cpu" not in args:
        raise IntqError(f"the peers run on aarch64; target {target} runs on {board.name}")
    return args[args.index("-cpu") + 1]


def runtime_for(model) -> str | None:
    """The peer runtime that loads ``model`` by its file name, or None."""
    suffix = Path(model).suffix.lower()
    return next((r for r, s in MODEL_SUFFIXES.items() if suffix in s), None)


@dataclass(frozen=True)
class PeerCount:
    """What one counted run of a peer saw."""

    runtime: str
    model: str
    cpu: str
    #: guest instructions of each counted inference, in order, the markers' cost taken off
    per_call: tuple[int, ...]
    #: guest instructions of an empty marked region (the markers' cost, taken off per_call)
    marker: int
    #: guest instructions of the whole process, start-up and exit included
    whole_process: int
    #: guest address each mapped ELF file was loaded at (its lowest mapping), by path
    libraries: dict[str, int]
    outputs: tuple[np.ndarray, ...]
    #: with ``blocks=True``: ``{library path: {(ELF address, instructions): executions per
    #: inference}}`` for the blocks that ran from the first marker on
    blocks: dict[str, dict[tuple[int, int], float]] | None = None
    #: with ``blocks=True``: instructions per inference in blocks outside every mapped file
    unmapped: float = 0.0

    @property
    def instructions(self) -> int:
        """Instructions of one warm inference: the median counted call; :class:`IntqError`
        unless the counted calls agree within :data:`~tvm_intq.targets.insn_count.WARM_SPREAD`."""
        calls = self.per_call
        if len(calls) < 2 or max(calls) - min(calls) > WARM_SPREAD * max(calls):
            raise IntqError(
                f"{Path(self.model).name} in {self.runtime} on {self.cpu}: "
                f"instructions per inference {list(calls)} do not agree within "
                f"{WARM_SPREAD:g}"
            )
        return sorted(calls)[len(calls) // 2]


def peer_instructions(
    model,
    inputs,
    runtime: str = "onnxruntime",
    cpu: str = "neoverse-n1",
    *,
    blocks: bool = False,
    warmup: int = WARMUP_CALLS,
    calls: int = CALLS,
    timeout: float = 1800.0,
) -> PeerCount:
    """Count ``calls`` warm inferences of ``model`` (an ``.onnx`` for ``onnxruntime``, a
    ``.tflite`` for ``litert``) on ``inputs`` (numpy arrays of one batch, in the model's input
    order) on emulated core ``cpu`` (qemu's name; see :func:`peer_cpu`), after ``warmup``
    uncounted ones. ``.instructions`` is the figure (median, spread checked); with ``blocks``
    the run also records the block profile (slower: a callback per block executed)."""
    if runtime not in RUNTIMES:
        raise IntqError(f"unknown peer runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    model = Path(model).resolve()
    if not model.is_file():
        raise IntqError(f"{model}: no such model file")
    if calls < 2:
        raise IntqError("calls must be >= 2 (the spread of the counted calls is checked)")
    t = _tools()
    with tempfile.TemporaryDirectory(prefix="tvm-intq-peer-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "args.npz", **{f"arg{i}": np.asarray(a) for i, a in enumerate(inputs)})
        plugin = f"{t['plugin']},out={tmp / 'counts'}" + (
            f",blocks={tmp / 'blocks'}" if blocks else ""
        )
        guest_env = {
            "PYTHONPATH": t["site"],
            "PYTHONHASHSEED": "0",
            "LD_BIND_NOW": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "ORT_DISABLE_TELEMETRY": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": tmp,
            "LC_ALL": "C.UTF-8",
        }
        cmd = [
            str(t["qemu"]),
            "-R",
            GUEST_ADDRESS_SPACE,
            "-cpu",
            cpu,
            "-L",
            str(t["sysroot"]),
            *(a for k, v in guest_env.items() for a in ("-E", f"{k}={v}")),
            "-plugin",
            plugin,
            str(t["python"]),
            "-S",
            str(t["runner"]),
            runtime,
            str(model),
            str(tmp / "args.npz"),
            str(warmup),
            str(EMPTY_REGIONS),
            str(calls),
            str(tmp / "out.npz"),
        ]
        # An empty environment: qemu-user passes its own on to the guest, which gets
        # guest_env only.
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp, env={})
        if proc.returncode != 0:
            raise IntqError(
                f"{model.name} in {runtime} on emulated {cpu} failed: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        libraries = mapped_files(proc.stdout)
        marks = [int(v) for v in (tmp / "counts").read_text().split()]
        empty = EMPTY_REGIONS
        if len(marks) != empty + calls + 2:
            raise IntqError(
                f"{model.name} in {runtime}: {len(marks)} marks counted, "
                f"{empty + calls + 2} expected: {proc.stdout[-500:]}"
            )
        # marks: the first, one after each empty region, one after each call, one at exit
        regions = [b - a for a, b in zip(marks, marks[1:])][: empty + calls]
        marker = sorted(regions[:empty])[empty // 2]
        per_call = tuple(r - marker for r in regions[empty:])
        with np.load(tmp / "out.npz") as out:
            outputs = tuple(out[f"out{i}"] for i in range(len(out.files)))
        profile, unmapped = None, 0.0
        if blocks:  # per inference
            summed, unmapped = file_blocks(tmp / "blocks", libraries)
            profile = {f: {k: e / calls for k, e in b.items()} for f, b in summed.items()}
            unmapped /= calls
    return PeerCount(
        runtime, str(model), cpu, per_call, marker, marks[-1], libraries, outputs, profile, unmapped
    )


def peer_mca_cycles(count: PeerCount, core: str) -> dict:
    """llvm-mca's estimate of the cycles one inference of ``count`` (a :func:`peer_instructions`
    result with ``blocks=True``) takes on ``core`` (llvm-mca's name), over all the code the
    inference ran, not its kernels only: ``{"total": cycles, "libraries": {file name: cycles},
    "modelled": fraction of the instructions whose blocks llvm-mca modelled}``
    (:func:`~tvm_intq.targets.mca.file_blocks_cycles`)."""
    if count.blocks is None:
        raise IntqError(
            "peer_mca_cycles needs a block profile: peer_instructions(..., blocks=True)"
        )
    return file_blocks_cycles(count.blocks, count.cpu, core, unmapped=count.unmapped)


def peer_figures(
    model,
    inputs,
    runtime: str | None = None,
    *,
    target: str = "aarch64",
    cores=("neoverse-n1",),
    warmup: int = WARMUP_CALLS,
    calls: int = CALLS,
) -> dict:
    """Plain data for reports: ``model`` in ``runtime`` (default: by its file name) on the
    core of ``target``'s emulated board, with llvm-mca estimates on ``cores``::

        {"runtime", "model", "cpu", "instructions", "instructions_per_call",
         "marker_instructions", "mca_cycles": {core: int}, "mca_modelled": {core: fraction},
         "mca_libraries": {core: {file: int}}, "instructions_by_file": {file: int},
         "dot_instructions": {"sdot"|"smmla"|...: executions per inference}}
    """
    runtime = runtime or runtime_for(model)
    if runtime is None:
        raise IntqError(
            f"{model}: no peer runtime loads this file (ONNX: onnxruntime, .tflite: litert)"
        )
    cpu = peer_cpu(target)
    count = peer_instructions(
        model, inputs, runtime, cpu, blocks=bool(cores), warmup=warmup, calls=calls
    )
    out = {
        "runtime": runtime,
        "model": str(model),
        "cpu": cpu,
        "target": target,
        "instructions": count.instructions,
        "instructions_per_call": list(count.per_call),
        "marker_instructions": count.marker,
        "mca_cycles": {},
        "mca_modelled": {},
        "mca_libraries": {},
    }
    if count.blocks is not None:
        mix = executed_mnemonics(count.blocks, cpu)
        out["dot_instructions"] = {m: round(mix[m]) for m in DOT_MACS if m in mix}
    for core in cores:
        est = peer_mca_cycles(count, core)
        out["mca_cycles"][core] = round(est["total"])
        out["mca_modelled"][core] = est["modelled"]
        out["mca_libraries"][core] = {k: round(v) for k, v in est["libraries"].items()}
        out["instructions_by_file"] = {k: round(v) for k, v in est["instructions"].items()}
    return out


def function_profile(count: PeerCount, library: str, gap: int = 512) -> list[dict]:
    """Where a peer's inference spends its instructions inside one of its libraries (the file
    whose name contains ``library``, e.g. ``litert_common`` for LiteRT's XNNPACK), by function,
    from a :func:`peer_instructions` block profile: the libraries are stripped, so a function is
    an ``.eh_frame`` FDE's address range (``llvm-dwarfdump --eh-frame``), and code outside every
    FDE (XNNPACK's hand-written assembly microkernels) is grouped into runs of blocks less than
    ``gap`` bytes apart. Returns ``[{"start": address, "assembly": bool, "instructions": per
    inference, "mnemonics": {mnemonic: executions}}]``, most executed first: the mnemonics
    say what a function is (``sdot``: a GEMM microkernel; ``smull``/``saddw``: a depthwise
    one; ``smax``: max pooling; ``sqrdmulh``: requantization)."""
    import re

    from tvm_intq.targets.mca import disassemble_blocks, llvm_tools

    if count.blocks is None:
        raise IntqError("function_profile needs a block profile: peer_instructions(blocks=True)")
    path = next((f for f in count.blocks if library in Path(f).name), None)
    if path is None:
        raise IntqError(f"no executed library matching {library!r}: {list(count.blocks)}")
    blocks = count.blocks[path]
    dwarfdump = llvm_tools()[0].replace("llvm-mca", "llvm-dwarfdump")
    out = subprocess.run([dwarfdump, "--eh-frame", path], capture_output=True, text=True).stdout
    fdes = sorted(
        (int(a, 16), int(b, 16))
        for a, b in re.findall(r"FDE cie=\w+ pc=([0-9a-f]+)\.\.\.([0-9a-f]+)", out)
    )
    starts = [a for a, _ in fdes]
    decoded = disassemble_blocks(path, blocks, count.cpu)
    groups: dict[tuple[int, bool], dict] = {}
    loose_end = None
    for (address, n), executions in sorted(blocks.items()):
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < fdes[i][1]:
            key = (fdes[i][0], False)
        else:
            if loose_end is None or address - loose_end[1] > gap:
                loose_end = [address, address]
            loose_end[1] = address + 4 * n
            key = (loose_end[0], True)
        g = groups.setdefault(
            key, {"start": key[0], "assembly": key[1], "instructions": 0.0, "mnemonics": {}}
        )
        g["instructions"] += n * executions
        for text in decoded.get((address, n), ()):
            m = text.split(None, 1)[0]
            g["mnemonics"][m] = g["mnemonics"].get(m, 0.0) + executions
    for g in groups.values():
        g["mnemonics"] = dict(sorted(g["mnemonics"].items(), key=lambda kv: -kv[1]))
    return sorted(groups.values(), key=lambda g: -g["instructions"])
