"""Cycles per kernel call on named cores, estimated with llvm-mca (Debian's LLVM).

    mca_cycles("m.so", "aarch64-emu", [x], "cortex-a76")   -> {kernel: cycles per call}

Method - an estimate, and reported as "llvm-mca estimate, <core>":

1. The library runs once on the emulated board with the block profile on
   (:func:`~tvm_intq.targets.insn_count.run_counted`): every straight-line block of the library
   that executed (a QEMU translation block: the instructions up to and including a branch) and
   how many times. These are the exact trip counts of every loop, with no guessing from the
   assembly.
2. The blocks are cut out of the library's disassembly and given to llvm-mca in one run, one
   code region each; llvm-mca simulates each as a loop of itself on the core's scheduling model
   and reports its cycles per iteration.
3. A kernel's estimate is the sum over its blocks of cycles per iteration x executions.

Not modelled: cache and TLB misses (every load hits L1), branch mispredictions, and overlap
between consecutive different blocks. For a loop whose body is one block - a kernel's inner
loop - the estimate is llvm-mca's steady state, which is what it is good at. RVV: llvm-mca reads
LMUL/SEW from the last ``vsetvli`` before a block in the region file; blocks are given in address
order, so a block without its own ``vsetvli`` takes the one above it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tvm_intq.errors import IntqError
from tvm_intq.targets.board import ELF_MACHINE_NAMES
from tvm_intq.targets.disassembly import kernel_of
from tvm_intq.targets.insn_count import Execution, _board, run_counted

#: Cores per architecture, as llvm-mca names them: in-order little (Cortex-A55), out-of-order
#: big (Neoverse-N1 is a Cortex-A76 derivative with its own, recent scheduling model; LLVM 19
#: schedules "cortex-a76" with its Cortex-A57 model - fmla latency 10 instead of 4 - so
#: neoverse-n1 is the Cortex-A76-class figure to quote) and, for RVV, SiFive's P670
#: (out-of-order, VLEN 128 like the emulated board; vector scheduling model since LLVM 19) and
#: the in-order X280 (VLEN 512).
CORES = {
    "aarch64": ("cortex-a55", "cortex-a76", "neoverse-n1"),
    "riscv64": ("sifive-p670", "sifive-x280"),
}
#: What each core's figure is, for reports.
CORE_NOTES = {
    "cortex-a76": "LLVM 19 uses its Cortex-A57 scheduling model",
    "neoverse-n1": "Cortex-A76 class, LLVM's Neoverse-N1 model",
}
#: The oldest LLVM whose llvm-mca models all of CORES (sifive-p670 arrived in LLVM 19).
MIN_LLVM = 19
#: The deterministic costs an emulated board measures a kernel by (``tvm-intq tune --cost``):
#: instructions executed (:mod:`.insn_count`) or llvm-mca cycles on a core (this module).
COSTS = ("instructions", "mca")
ITERATIONS = 100
#: What the emulated CPUs execute (qemu -cpu max; rv64 with V): llvm-mca must parse every
#: instruction a library for any target of the architecture can have.
_MATTR = {"aarch64": "+neon,+dotprod,+i8mm", "riscv64": "+m,+a,+f,+d,+c,+v"}

_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(.+)$")
_SYMBOL = re.compile(r"^([0-9a-f]+) <(.+)>:$")
_TARGET = re.compile(r"(?:0x)?[0-9a-f]+ <[^>]*>")  # a branch target as objdump prints it
_ANNOTATION = re.compile(r"\s*<[^>]*>")  # what remains: symbol of an offset
_COMMENT = {"aarch64": re.compile(r"\s+//.*$"), "riscv64": re.compile(r"\s+#.*$")}


def llvm_tools() -> tuple[str, str]:
    """(llvm-mca, llvm-objdump) of the newest LLVM on PATH that is at least :data:`MIN_LLVM`.
    Both from one LLVM: llvm-mca re-assembles what llvm-objdump prints."""
    for version in range(40, MIN_LLVM - 1, -1):
        mca, objdump = shutil.which(f"llvm-mca-{version}"), shutil.which(f"llvm-objdump-{version}")
        if mca and objdump:
            return mca, objdump
    raise IntqError(
        f"llvm-mca >= {MIN_LLVM} not found (llvm-mca-{MIN_LLVM} and "
        f"llvm-objdump-{MIN_LLVM}): install llvm-{MIN_LLVM} (make system-deps)"
    )


def architecture(board) -> str:
    """``aarch64`` or ``riscv64``: the key of :data:`CORES` for ``board``."""
    return ELF_MACHINE_NAMES[board.elf_machine]


def _functions(library: Path, arch: str, objdump: str) -> tuple[dict[int, str], dict[int, str]]:
    """``{address: instruction text llvm-mca accepts}`` and ``{address: function}``."""
    cmd = [objdump, "-d", "--no-show-raw-insn", f"--mattr={_MATTR[arch]}", str(library)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise IntqError(f"{objdump} failed on {library}: {out.stderr.strip()[-500:]}")
    insns, owner, function = {}, {}, None
    for line in out.stdout.splitlines():
        if m := _SYMBOL.match(line):
            function = m[2]
        elif (m := _INSN.match(line)) and function is not None:
            text = _ANNOTATION.sub("", _TARGET.sub(".", m[2].replace("\t", " ")))
            text = _COMMENT[arch].sub("", text).strip()
            insns[int(m[1], 16)] = text
            owner[int(m[1], 16)] = function
    return insns, owner


def kernel_blocks(library, execution: Execution, arch: str, objdump: str):
    """``[(kernel, [instruction text], executions)]`` for the profiled blocks inside TVM
    kernels, in address order."""
    insns, owner = _functions(Path(library), arch, objdump)
    addresses = sorted(insns)
    index = {a: i for i, a in enumerate(addresses)}
    out = []
    for (offset, n), executions in sorted(execution.blocks.items()):
        kernel = kernel_of(owner.get(offset, ""))
        if kernel is None or offset not in index:
            continue
        body = [insns[a] for a in addresses[index[offset] : index[offset] + n]]
        if len(body) == n and not any("<unknown>" in t for t in body):
            out.append((kernel, body, executions))
    return out


def mca_cycles(
    library, board, args, cpu: str, *, function: str = "main", execution: Execution | None = None
) -> dict[str, float]:
    """``{kernel: estimated cycles per call}`` of ``library`` on core ``cpu`` (llvm-mca's name,
    see :data:`CORES`) for one call of ``function`` with ``args`` on emulated ``board``
    (see the module docstring for the method). ``execution``: a block profile of that call from
    :func:`run_counted` (``calls=1, blocks=True``), to estimate several cores from one run."""
    board = _board(board)
    mca, objdump = llvm_tools()
    if execution is None:
        execution = run_counted(library, board, args, function=function, calls=1, blocks=True)
    if execution.blocks is None:
        raise IntqError("mca_cycles needs a block profile: run_counted(..., blocks=True)")
    calls = len(execution.per_call)
    arch = architecture(board)
    blocks = kernel_blocks(library, execution, arch, objdump)
    if not blocks:
        return {}
    regions = "".join(
        f"# LLVM-MCA-BEGIN b{i}\n" + "\n".join(body) + "\n# LLVM-MCA-END\n"
        for i, (_, body, _) in enumerate(blocks)
    )
    with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
        f.write(regions)
        f.flush()
        proc = subprocess.run(
            [
                mca,
                f"-mtriple={arch}-linux-gnu",
                f"-mcpu={cpu}",
                f"-mattr={_MATTR[arch]}",
                f"-iterations={ITERATIONS}",
                "-json",
                f.name,
            ],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise IntqError(
            f"llvm-mca -mcpu={cpu} on {Path(library).name}: {proc.stderr.strip()[-1000:]}"
        )
    per_iteration = {
        r["Name"]: r["SummaryView"]["TotalCycles"] / r["SummaryView"]["Iterations"]
        for r in json.loads(proc.stdout)["CodeRegions"]
    }
    out: dict[str, float] = {}
    for i, (kernel, _, executions) in enumerate(blocks):
        out[kernel] = out.get(kernel, 0.0) + per_iteration[f"b{i}"] * executions / calls
    return out
