"""Lookup tables gathered with byte permutes: a TIR pass on vectorized kernels.

A vector load ``table[index]`` from a table of :data:`~.intrinsics.LOOKUP_ENTRIES` int8
entries (a packed kernel's lookup stage, vectorized by the default schedule) becomes register
permutes over the whole table, exact for every index in ``[0, 256)``, which is all a 256-entry
table is ever indexed with:

* x86 with AVX-512 VBMI: the table in four 64-byte registers, two ``vpermi2b`` over its halves
  and a select on the index's top bit;
* AArch64: the table in sixteen 16-byte registers, ``tbl`` over the first 64 entries and a
  ``tbx`` for each next 64 (an index outside a ``tbx``'s 64 leaves the lane as it was), as
  XNNPACK's NEON lookup kernels do.

Without it, TVM's codegen scalarizes the gather: each lane extracted, its entry loaded and
inserted back (60-70 % of a conv+SiLU kernel's time on znver4). Written here because neither
TVM nor LLVM forms a table permute from a gather.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_intq.schedules.intrinsics import LOOKUP_ENTRIES, table_permutes

#: Index lanes one permute instruction takes, by architecture.
_WIDE = {"x86": 64, "aarch64": 16}


def _const_ramp(start: int, lanes: int, dtype: str):
    return tirx.Ramp(tirx.const(start, dtype), tirx.const(1, dtype), lanes)


def _lanes(n: int):
    return [tirx.IntImm("int32", i) for i in range(n)]


def _vbmi(buf, index, idx_t: str):
    """64 lanes of ``buf[index]``: two vpermi2b, the index's top bit picks."""
    wide = "int8x64"

    def permute(a, b):
        quarters = [tirx.BufferLoad(buf, [_const_ramp(q * 64, 64, idx_t)]) for q in (a, b)]
        return tirx.call_llvm_pure_intrin(
            wide, "llvm.x86.avx512.vpermi2var.qi.512", quarters[0], index, quarters[1]
        )

    top = tirx.LT(index, tirx.Broadcast(tirx.const(0, "int8"), 64))
    return tirx.Select(top, permute(2, 3), permute(0, 1))


def _neon(buf, index, idx_t: str):
    """16 lanes of ``buf[index]``: tbl over entries 0-63, tbx over each next 64 (in uint8, so
    the index's byte wraps past a tbx's range instead of overflowing a signed type)."""
    byte = tirx.Cast("uint8x16", index)
    out = None
    for part in range(4):
        table = [
            tirx.BufferLoad(buf, [_const_ramp(64 * part + 16 * r, 16, idx_t)]) for r in range(4)
        ]
        at = byte - tirx.Broadcast(tirx.const(64 * part, "uint8"), 16) if part else byte
        if out is None:
            out = tirx.call_llvm_pure_intrin("int8x16", "llvm.aarch64.neon.tbl4.v16i8", *table, at)
        else:
            out = tirx.call_llvm_pure_intrin(
                "int8x16", "llvm.aarch64.neon.tbx4.v16i8", out, *table, at
            )
    return out


_IMPLS = {"x86": _vbmi, "aarch64": _neon}


def _permuted(load: TensorLoad, arch: str):
    """``load`` as ``arch``'s permutes, or None when it is not a gather from a 256-entry int8
    table of lanes the permute takes (a divisor of its width)."""
    buf, lanes, wide = load.source, tvm.DataType(str(load.ty)).lanes, _WIDE[arch]
    if (
        lanes <= 1
        or wide % lanes
        or str(buf.dtype) != "int8"
        or len(buf.shape) != 1
        or not isinstance(buf.shape[0], tirx.IntImm)
        or int(buf.shape[0]) != LOOKUP_ENTRIES
        or len(load.indices) != 1
        or isinstance(load.indices[0], tirx.Ramp)
    ):
        return None
    index = tirx.Cast(f"int8x{lanes}", load.indices[0])  # the index's byte: exact below 256
    if lanes < wide:  # the lanes repeated to the instruction's width, the first ones kept
        index = tirx.Shuffle([index] * (wide // lanes), _lanes(wide))
    idx_t = str(tvm.DataType(str(load.indices[0].ty)).with_lanes(1))
    picked = _IMPLS[arch](buf, index, idx_t)
    return picked if lanes == wide else tirx.Shuffle([picked], _lanes(lanes))


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="TableLookupPermute")
def TableLookupPermute(func, mod, ctx):  # noqa: N802 (a pass, named as TVM names them)
    """Rewrite vector gathers from 256-entry int8 tables (module docstring) in functions
    built for a target with one of :data:`~.intrinsics.LOOKUP_FEATURES`."""
    target = func.attrs.get("target") if func.attrs is not None else None
    arch = None if target is None else table_permutes(target)
    if arch is None:
        return func

    def rewrite(load):
        permuted = _permuted(load, arch)
        return load if permuted is None else permuted

    return func.with_body(tvm_ffi.structural_map(func.body, [(TensorLoad, rewrite)]))
