"""Which instructions a compiled library's kernels use, counted from its disassembly.

``tvm-intq inspect model.so`` answers "did the int8 kernels get the dot-product instruction?"
per kernel: the library is disassembled (``llvm-objdump``, else binutils ``objdump``), each
function is attributed to the TVM kernel it belongs to (``__tvm_ffi_<kernel>`` is the entry,
``<kernel>_compute_`` the body of its parallel loop) and the instructions that matter for the
library's architecture are counted. Returns plain data; the CLI prints it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from tvm_intq.errors import IntqError

#: What to count per architecture (objdump's name for it): instruction mnemonics ("vwmacc*":
#: every mnemonic starting with "vwmacc", i.e. .vv/.vx/su/u forms), plus the vector registers
#: by width ("zmm" = any instruction with a 512-bit operand). RISC-V: the widening
#: multiply(-add)s and reductions an exact int8 kernel is made of (int8 x int8 -> int16/int32).
WATCH = {
    "x86-64": {
        "mnemonics": ("vpdpbusd", "vpdpbusds", "vpmaddubsw", "vpmaddwd"),
        "registers": ("zmm", "ymm", "xmm"),
    },
    "aarch64": {
        "mnemonics": (
            "sdot",
            "udot",
            "usdot",
            "smmla",
            "ummla",
            "usmmla",
            "smlal",
            "smlal2",
            "mul",
        ),
        "registers": (),
    },
    "riscv64": {
        "mnemonics": ("vwmacc*", "vwmul*", "vwredsum*", "vdot*", "vmacc*", "vset*"),
        "registers": (),
    },
}
_DISASSEMBLERS = {
    "x86-64": ("llvm-objdump", "objdump"),
    "aarch64": ("llvm-objdump", "aarch64-linux-gnu-objdump"),
    "riscv64": ("llvm-objdump", "riscv64-linux-gnu-objdump"),
}
# llvm-objdump decodes only the extensions it is told about (binutils' objdump knows the ARM
# ones, but prints RVV as .4byte).
_LLVM_MATTR = {"aarch64": "--mattr=+dotprod,+i8mm", "riscv64": "--mattr=+v"}
_ENTRY = "__tvm_ffi_"
_BODY = re.compile(r"_compute_(?:_\d+)?$")
_SYMBOL = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def architecture(library) -> str:
    """``x86-64``, ``aarch64`` or ``riscv64``, from the ELF header."""
    data = Path(library).read_bytes()[:20]
    if data[:4] != b"\x7fELF":
        raise IntqError(f"{library}: not an ELF shared library")
    machine = int.from_bytes(data[18:20], "little")
    names = {0x3E: "x86-64", 0xB7: "aarch64", 0xF3: "riscv64"}
    if machine not in names:
        raise IntqError(f"{library}: unsupported ELF machine {machine:#x}")
    return names[machine]


def disassemble(library, arch: str) -> str:
    for tool in _DISASSEMBLERS[arch]:
        path = shutil.which(tool)
        if path is None:
            continue
        cmd = [path, "-d", "--no-show-raw-insn", str(library)]
        if tool == "llvm-objdump" and arch in _LLVM_MATTR:
            cmd.insert(2, _LLVM_MATTR[arch])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout
    raise IntqError(
        f"no disassembler for {arch} found (tried {', '.join(_DISASSEMBLERS[arch])}); "
        "install llvm (llvm-objdump) or binutils"
    )


def kernel_of(symbol: str) -> str | None:
    """The TVM kernel a function symbol belongs to (None: not a kernel)."""
    if symbol.startswith(_ENTRY):
        return symbol[len(_ENTRY) :]
    if _BODY.search(symbol):
        return _BODY.sub("", symbol)
    return None


def count_instructions(asm: str, arch: str) -> dict[str, Counter]:
    """``{kernel: Counter}`` of the watched mnemonics and register widths, plus ``total``."""
    watch = WATCH[arch]
    exact = {m for m in watch["mnemonics"] if not m.endswith("*")}
    prefixes = [m for m in watch["mnemonics"] if m.endswith("*")]
    out: dict[str, Counter] = {}
    current = None
    for line in asm.splitlines():
        m = _SYMBOL.match(line)
        if m:
            current = kernel_of(m.group(1))
            if current is not None:
                out.setdefault(current, Counter())
            continue
        if current is None or ":" not in line or not line.startswith(" "):
            continue
        text = line.split(":", 1)[1].strip()
        if not text:
            continue
        mnemonic = text.split()[0]
        counts = out[current]
        counts["total"] += 1
        if mnemonic in exact:
            counts[mnemonic] += 1
        for family in prefixes:
            if mnemonic.startswith(family[:-1]):
                counts[family] += 1
        for reg in watch["registers"]:
            if f"%{reg}" in text or re.search(rf"\b{reg}\d", text):
                counts[reg] += 1
                break  # count an instruction once, by its widest register
    return out


def inspect_library(library) -> dict:
    """``{"architecture": ..., "columns": [...], "kernels": {name: {column: count}}}``."""
    library = Path(library)
    if not library.is_file():
        raise IntqError(f"{library}: no such library")
    arch = architecture(library)
    counts = count_instructions(disassemble(library, arch), arch)
    columns = list(WATCH[arch]["mnemonics"]) + list(WATCH[arch]["registers"]) + ["total"]
    return {
        "architecture": arch,
        "columns": columns,
        "kernels": {k: {c: int(v.get(c, 0)) for c in columns} for k, v in sorted(counts.items())},
    }
