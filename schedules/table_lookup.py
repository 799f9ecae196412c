"""Lookup tables gathered with byte permutes: a TIR pass on vectorized kernels.

A vector load ``table[index]`` from a table of :data:`~.intrinsics.LOOKUP_ENTRIES` int8
entries (the lookup stage of a packed kernel, vectorized along a pixel's channels by the
default schedule) becomes, on a target with AVX-512 VBMI, two ``vpermi2b`` over the table's
four 64-byte quarters and a select on the index's top bit: exact for every index in
``[0, 256)``, which is all a 256-entry table is ever indexed with. LLVM would otherwise
extract each lane, load its entry and insert it back (a TVM gather is scalarized at codegen).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from tvm_intq.schedules.intrinsics import LOOKUP_ENTRIES, permutes_tables

_PERMUTE = "llvm.x86.avx512.vpermi2var.qi.512"
_WIDE = 64  # index bytes of one vpermi2b


def _permuted(load: TensorLoad):
    """``load`` as permutes, or None when it is not a gather from a 256-entry int8 table."""
    buf, lanes = load.source, tvm.DataType(str(load.ty)).lanes
    if (
        lanes <= 1
        or _WIDE % lanes
        or str(buf.dtype) != "int8"
        or len(buf.shape) != 1
        or not isinstance(buf.shape[0], tirx.IntImm)
        or int(buf.shape[0]) != LOOKUP_ENTRIES
        or len(load.indices) != 1
        or isinstance(load.indices[0], tirx.Ramp)
    ):
        return None
    index = tirx.Cast(f"int8x{lanes}", load.indices[0])  # the index's byte: exact below 256
    wide = tirx.Shuffle([index] * (_WIDE // lanes), [tirx.IntImm("int32", i) for i in range(_WIDE)])
    idx_t = str(tvm.DataType(str(load.indices[0].ty)).with_lanes(1))

    def quarter(q):
        start, step = tirx.const(q * _WIDE, idx_t), tirx.const(1, idx_t)
        return tirx.BufferLoad(buf, [tirx.Ramp(start, step, _WIDE)])

    def permute(a, b):
        return tirx.call_llvm_pure_intrin(f"int8x{_WIDE}", _PERMUTE, quarter(a), wide, quarter(b))

    top = tirx.LT(wide, tirx.Broadcast(tirx.const(0, "int8"), _WIDE))
    picked = tirx.Select(top, permute(2, 3), permute(0, 1))
    if lanes == _WIDE:
        return picked
    return tirx.Shuffle([picked], [tirx.IntImm("int32", i) for i in range(lanes)])


@tvm.tirx.transform.prim_func_pass(opt_level=0, name="TableLookupPermute")
def TableLookupPermute(func, mod, ctx):  # noqa: N802 (a pass, named as TVM names them)
    """Rewrite vector gathers from 256-entry int8 tables (module docstring) in functions
    built for a target with :data:`~.intrinsics.LOOKUP_FEATURES`."""
    target = func.attrs.get("target") if func.attrs is not None else None
    if target is None or not permutes_tables(target):
        return func

    def rewrite(load):
        permuted = _permuted(load)
        return load if permuted is None else permuted

    return func.with_body(tvm_ffi.structural_map(func.body, [(TensorLoad, rewrite)]))
