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
from tvm_intq.targets.insn_count import Execution, _board, load_segments, run_counted

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
#: Every instruction a library for any target of the architecture can have (the emulated cores
#: run the target's subset: Neoverse-N1 for aarch64, N2 for aarch64-i8mm; rv64 with V):
#: llvm-mca must parse them all.
_MATTR = {"aarch64": "+neon,+dotprod,+i8mm", "riscv64": "+m,+a,+f,+d,+c,+v"}

_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(.+)$")
_SYMBOL = re.compile(r"^([0-9a-f]+) <(.+)>:$")
# A branch target as objdump prints it: an address (not the end of a register name: RISC-V's
# `jalr ra, 0(ra)` prints as `jalr ra <f>`) and its symbol.
_TARGET = re.compile(r"(?<![\w(])(?:0x)?[0-9a-f]+ <[^>]*>")
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
            insns[int(m[1], 16)] = instruction_text(m[2], arch)
            owner[int(m[1], 16)] = function
    return insns, owner


def instruction_text(printed: str, arch: str) -> str:
    """An instruction as llvm-objdump prints it -> the text llvm-mca assembles: branch
    targets become ``.`` (the block is timed as straight-line code), symbol annotations and
    comments go."""
    text = _ANNOTATION.sub("", _TARGET.sub(".", printed.replace("\t", " ")))
    return _COMMENT[arch].sub("", text).strip()


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


def kernel_instructions(library, execution: Execution, board) -> dict[str, dict]:
    """``{kernel: {"instructions": per call, "mnemonics": {mnemonic: executions per call}}}``
    of ``library``'s TVM kernels in a :func:`run_counted` block profile (``blocks=True``),
    most executed first: which kernel executes what, e.g. how many of its instructions are
    ``sdot`` or RVV widening multiply-adds. A kernel's entry wrapper (``__tvm_ffi_<kernel>``:
    argument checks) counts with it."""
    if execution.blocks is None:
        raise IntqError("kernel_instructions needs a block profile: run_counted(..., blocks=True)")
    _, objdump = llvm_tools()
    arch = architecture(_board(board))
    calls = len(execution.per_call)
    insns, owner = _functions(Path(library), arch, objdump)
    addresses = sorted(insns)
    index = {a: i for i, a in enumerate(addresses)}
    out: dict[str, dict] = {}
    for (offset, n), executions in execution.blocks.items():
        kernel = kernel_of(owner.get(offset, ""))
        if kernel is None or offset not in index:
            continue
        entry = out.setdefault(kernel, {"instructions": 0.0, "mnemonics": {}})
        entry["instructions"] += n * executions / calls
        mix = entry["mnemonics"]
        for a in addresses[index[offset] : index[offset] + n]:
            m = insns[a].split(None, 1)[0]
            mix[m] = mix.get(m, 0.0) + executions / calls
    for entry in out.values():
        entry["mnemonics"] = dict(sorted(entry["mnemonics"].items(), key=lambda kv: -kv[1]))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["instructions"]))


def mca_cycles(
    library, board, args, cpu: str, *, function: str = "main", execution: Execution | None = None
) -> dict[str, float]:
    """``{kernel: estimated cycles per call}`` of ``library`` on core ``cpu`` (llvm-mca's name,
    see :data:`CORES`) for one call of ``function`` with ``args`` on emulated ``board``
    (see the module docstring for the method). ``execution``: a block profile of that call from
    :func:`run_counted` (``calls=1, blocks=True``), to estimate several cores from one run."""
    board = _board(board)
    _, objdump = llvm_tools()
    if execution is None:
        execution = run_counted(library, board, args, function=function, calls=1, blocks=True)
    if execution.blocks is None:
        raise IntqError("mca_cycles needs a block profile: run_counted(..., blocks=True)")
    calls = len(execution.per_call)
    arch = architecture(board)
    blocks = kernel_blocks(library, execution, arch, objdump)
    if not blocks:
        return {}
    per_iteration = region_cycles([body for _, body, _ in blocks], arch, cpu)
    if None in per_iteration:
        bad = next(body for (_, body, _), c in zip(blocks, per_iteration) if c is None)
        raise IntqError(
            f"llvm-mca -mcpu={cpu} on {Path(library).name} cannot model the block {'; '.join(bad)}"
        )
    out: dict[str, float] = {}
    for (kernel, _, executions), cycles in zip(blocks, per_iteration):
        out[kernel] = out.get(kernel, 0.0) + cycles * executions / calls
    return out


def region_cycles(
    bodies: list[list[str]], arch: str, cpu: str, mattr: str | None = None
) -> list[float | None]:
    """llvm-mca's steady-state cycles per iteration of each straight-line block in ``bodies``
    (instruction texts) on core ``cpu``, all in one llvm-mca run (one code region each);
    ``None`` for a block llvm-mca cannot model whole (an instruction it cannot parse with
    ``mattr`` - default :data:`_MATTR` - or that the core's scheduling model lacks, e.g. SVE
    on Neoverse-N1): such instructions are skipped by llvm-mca, and a region that comes out
    with fewer instructions than it was given is not an estimate of the block."""
    if not bodies:
        return []
    mca, _ = llvm_tools()
    regions = "".join(
        f"# LLVM-MCA-BEGIN b{i}\n" + "\n".join(body) + "\n# LLVM-MCA-END\n"
        for i, body in enumerate(bodies)
    )
    with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
        f.write(regions)
        f.flush()
        proc = subprocess.run(
            [
                mca,
                f"-mtriple={arch}-linux-gnu",
                f"-mcpu={cpu}",
                f"-mattr={mattr or _MATTR[arch]}",
                f"-iterations={ITERATIONS}",
                "-skip-unsupported-instructions=any",
                "-json",
                f.name,
            ],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise IntqError(f"llvm-mca -mcpu={cpu}: {proc.stderr.strip()[-1000:]}")
    out: list[float | None] = [None] * len(bodies)
    for r in json.loads(proc.stdout)["CodeRegions"]:
        i, view = int(r["Name"][1:]), r["SummaryView"]
        if view["Instructions"] == len(bodies[i]) * view["Iterations"]:
            out[i] = view["TotalCycles"] / view["Iterations"]
    return out


# ------------------------------------------------------------------ any library's blocks
_MC_WARNING = re.compile(r":(\d+):\d+: warning: invalid instruction encoding")
#: llvm-mca -mattr for blocks of any library (the TVM runtime, libc, the peers' runtimes): what
#: the emulated cores execute besides the targets' own features (glibc and the runtimes use
#: LSE atomics, RCpc loads, CRC32, fp16).
ANY_CODE_MATTR = "+neon,+dotprod,+i8mm,+lse,+rcpc,+crc,+fullfp16,+fp16fml,+bf16,+aes,+sha2"


def disassemble_blocks(library, blocks, cpu: str) -> dict[tuple[int, int], list[str]]:
    """``{(address, n): [instruction text]}`` for executed ``blocks`` (``(ELF virtual
    address, instructions)`` pairs) of the aarch64 ELF file ``library``, read from its bytes
    and disassembled by llvm-mc for core ``cpu`` (the emulated core: every instruction it ran
    decodes): for any library, stripped or not, without disassembling all of it (ONNX Runtime's
    is 20 MB of code). A block with an instruction llvm-mc cannot decode is left out. aarch64
    only: its instructions are 4 bytes each, so ``n`` instructions are ``4 n`` bytes."""
    blocks = sorted(set(blocks))
    if not blocks:
        return {}
    mca, _ = llvm_tools()
    mc = mca.replace("llvm-mca", "llvm-mc")
    segments = load_segments(library)
    data = Path(library).read_bytes()
    lines, owners = [], []
    for vaddr, n in blocks:
        seg = next((s for s in segments if s[0] <= vaddr and vaddr + 4 * n <= s[0] + s[2]), None)
        if seg is None:
            continue
        start = seg[1] + vaddr - seg[0]
        for k in range(n):
            lines.append(" ".join(f"0x{b:02x}" for b in data[start + 4 * k : start + 4 * k + 4]))
            owners.append((vaddr, n))
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        proc = subprocess.run(
            [mc, "--disassemble", "-triple=aarch64-linux-gnu", f"-mcpu={cpu}", f.name],
            capture_output=True,
            text=True,
        )
    invalid = {int(m[1]) - 1 for m in _MC_WARNING.finditer(proc.stderr)}
    decoded = iter(
        _COMMENT["aarch64"].sub("", t).replace("\t", " ").strip()
        for t in proc.stdout.splitlines()
        if t.strip() and t.strip() != ".text"
    )
    bodies: dict[tuple[int, int], list[str]] = {}
    bad = set()
    for i, owner in enumerate(owners):
        if i in invalid:
            bad.add(owner)
            continue
        text = next(decoded, None)
        if text is None:
            raise IntqError(
                f"llvm-mc --disassemble on {library}: fewer instructions than bytes "
                f"given: {proc.stderr.strip()[-500:]}"
            )
        bodies.setdefault(owner, []).append(text)
    return {b: body for b, body in bodies.items() if b not in bad and len(body) == b[1]}


def file_blocks_cycles(
    blocks_by_file: dict, emulated_cpu: str, core: str, *, unmapped: float = 0.0
) -> dict:
    """llvm-mca's estimate over every block in ``blocks_by_file`` (``{ELF file: {(address,
    instructions): weight}}``, e.g. executions per call) of aarch64 code that ran on qemu
    ``-cpu emulated_cpu``, on ``core``: each block's steady-state cycles per iteration x its
    weight, summed. Returns ``{"total": cycles, "libraries": {file name: cycles}, "modelled":
    the fraction of the weighted instructions (``unmapped`` ones included) whose blocks llvm-mca
    modelled, "instructions": {file name: weighted instructions}}``: a block is left out when
    llvm-mc cannot decode it or llvm-mca cannot model one of its instructions on ``core`` (SVE
    on Neoverse-N1)."""
    bodies, weights, owners = [], [], []
    executed = unmapped
    for lib, blocks in blocks_by_file.items():
        decoded = disassemble_blocks(lib, blocks, emulated_cpu)
        for key, weight in blocks.items():
            executed += key[1] * weight
            if key in decoded:
                bodies.append(decoded[key])
                weights.append(weight)
                owners.append(Path(lib).name)
    cycles = region_cycles(bodies, "aarch64", core, ANY_CODE_MATTR)
    total, modelled, per_lib = 0.0, 0.0, {}
    for body, w, lib, c in zip(bodies, weights, owners, cycles):
        if c is None:
            continue
        total += c * w
        modelled += len(body) * w
        per_lib[lib] = per_lib.get(lib, 0.0) + c * w
    instructions = {
        Path(lib).name: sum(n * w for (_, n), w in blocks.items())
        for lib, blocks in blocks_by_file.items()
    }
    return {
        "total": total,
        "modelled": modelled / executed if executed else 0.0,
        "libraries": dict(sorted(per_lib.items(), key=lambda kv: -kv[1])),
        "instructions": dict(sorted(instructions.items(), key=lambda kv: -kv[1])),
    }


def whole_call_cycles(execution: Execution, board, core: str) -> dict:
    """:func:`file_blocks_cycles` per call of a :func:`run_counted` run with ``blocks=True``
    on an aarch64 ``board``: everything the call ran (TVM's VM and runtime, libc, the
    library), as :func:`tvm_intq.targets.peers.peer_mca_cycles` counts the peers - where
    :func:`mca_cycles` counts the TVM kernels only."""
    board = _board(board)
    if execution.file_blocks is None:
        raise IntqError("whole_call_cycles needs a block profile: run_counted(..., blocks=True)")
    if architecture(board) != "aarch64":
        raise IntqError(
            f"whole_call_cycles reads aarch64 code; board {board.name} is {architecture(board)}"
        )
    args = list(board.emulator.qemu_args)
    cpu = args[args.index("-cpu") + 1] if "-cpu" in args else "max"
    calls = len(execution.per_call)
    per_call = {
        f: {k: e / calls for k, e in blocks.items()} for f, blocks in execution.file_blocks.items()
    }
    return file_blocks_cycles(per_call, cpu, core, unmapped=execution.unmapped / calls)


#: The int8 dot-product instructions of aarch64 and their multiply-accumulates each (128-bit):
#: sdot/udot/usdot/sudot 16 (4 lanes x 4), smmla/ummla/usmmla 32 (2x8 by 8x2).
DOT_MACS = {
    "sdot": 16,
    "udot": 16,
    "usdot": 16,
    "sudot": 16,
    "smmla": 32,
    "ummla": 32,
    "usmmla": 32,
}


def executed_mnemonics(blocks_by_file: dict, emulated_cpu: str) -> dict[str, float]:
    """``{mnemonic: executions}`` over ``blocks_by_file`` (as :func:`file_blocks_cycles` takes
    it: executions per call give executions per call), most executed first: which instructions
    the code ran (``sdot``/``smmla`` count the int8 dot products, for MACs per instruction)."""
    out: dict[str, float] = {}
    for lib, blocks in blocks_by_file.items():
        decoded = disassemble_blocks(lib, blocks, emulated_cpu)
        for key, weight in blocks.items():
            for text in decoded.get(key, ()):
                mnemonic = text.split(None, 1)[0]
                out[mnemonic] = out.get(mnemonic, 0.0) + weight
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
