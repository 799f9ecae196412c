"""Accumulator truncation analysis (S3's optimal truncation point): how wide each integer
conv/dense accumulator can get, and whether it can overflow int32."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.core import intmath
from tvm_intq.relay_passes.analysis.ir_utils import const_value, dtype_of, op_name
from tvm_intq.relay_passes.analysis.rebuild import bindings_of
from tvm_intq.relay_passes.ops.requantize import requant_of

_MOVES = {
    "relax.nn.pad",
    "relax.nn.max_pool2d",
    "relax.nn.max_pool1d",
    "relax.nn.max_pool3d",
    "relax.reshape",
    "relax.permute_dims",
    "relax.squeeze",
    "relax.expand_dims",
    "relax.strided_slice",
    "relax.flatten",
    "relax.image.resize2d",
    "relax.broadcast_to",
}


def accumulator_report(mod: tvm.IRModule) -> list[dict]:
    """One entry per int32-accumulating conv2d/matmul of a folded module, in program order.

    For ``acc = sum_k Q_in[k] * Qw[k, c]`` the worst case over every input the int8 producer
    can emit (its clip bounds, a table's values, else [-128, 127]; padding values included)
    is :func:`tvm_intq.core.intmath.accumulator_range`. The requantize that follows gives the
    bias in accumulator units (``(ADD - 2^(S-1)) / MUL``, exact for ``MUL = 1``) and S3's
    truncation point, the shift ``S`` that keeps the output's 8 bits of the accumulator.

    Each entry (plain data): ``name`` (the layer's int8 output), ``op``, ``input_range``,
    ``acc_min``/``acc_max`` (over channels), ``acc_bits`` (two's-complement bits needed),
    ``with_bias_min``/``with_bias_max``/``with_bias_bits`` (accumulator plus bias, as S3's
    hardware adds it before truncation), ``overflows_int32`` (can the int32 accumulator
    wrap), ``headroom_bits`` (32 - bits), ``shift_min``/``shift_max`` and ``mul_is_one``.
    """
    bindings = bindings_of(mod["main"])
    defs = {b.var: b.value for b in bindings}
    users: dict = {}
    for b in bindings:
        for a in getattr(b.value, "args", []):
            if isinstance(a, relax.Var):
                users.setdefault(a, []).append(b)
    out = []
    for b in bindings:
        name = op_name(b.value)
        if name not in ("relax.nn.conv2d", "relax.matmul") or dtype_of(b.var) != "int32":
            continue
        qw = const_value(b.value.args[1])
        if qw is None:
            continue
        w_axis = 0 if name == "relax.nn.conv2d" else qw.ndim - 1
        q_lo, q_hi = _int_range(b.value.args[0], defs)
        acc_lo, acc_hi = intmath.accumulator_range(qw, w_axis, q_lo, q_hi)
        layer, mul, add, shift = _requantize_after(b.var, users)
        if mul is not None:
            mul_c, add_c, shift_c = (
                np.broadcast_to(np.asarray(v).reshape(-1), acc_lo.shape) for v in (mul, add, shift)
            )
            rounding = intmath.rounding_constant(shift_c)
            bias = np.rint((add_c - rounding) / np.maximum(mul_c, 1)).astype(np.int64)
        else:
            bias = np.zeros_like(acc_lo)
        tot_lo, tot_hi = acc_lo + bias, acc_hi + bias
        entry = {
            "name": (layer[:-2] if layer and layer.endswith("_q") else layer) or b.var.name,
            "op": name.split(".")[-1],
            "input_range": [int(q_lo), int(q_hi)],
            "acc_min": int(acc_lo.min()),
            "acc_max": int(acc_hi.max()),
            "acc_bits": intmath.signed_bits(acc_lo.min(), acc_hi.max()),
            "with_bias_min": int(tot_lo.min()),
            "with_bias_max": int(tot_hi.max()),
            "with_bias_bits": intmath.signed_bits(tot_lo.min(), tot_hi.max()),
        }
        entry["overflows_int32"] = entry["acc_bits"] > 32
        entry["headroom_bits"] = 32 - entry["acc_bits"]
        if mul is not None:
            entry.update(
                shift_min=int(np.min(shift)),
                shift_max=int(np.max(shift)),
                mul_is_one=bool(np.all(np.asarray(mul) == 1)),
            )
        out.append(entry)
    return out


def _int_range(var, defs) -> tuple[int, int]:
    """The values an int8 tensor can hold, read from what produces it."""
    lo, hi = intmath.QMIN, intmath.QMAX
    extra = []  # padding values
    value = defs.get(var) if isinstance(var, relax.Var) else None
    while value is not None:
        name = op_name(value)
        if name == "relax.nn.pad":
            extra.append(int(float(value.attrs.pad_value)))
        if name in _MOVES:
            value = defs.get(value.args[0]) if isinstance(value.args[0], relax.Var) else None
            continue
        rq = requant_of(value)
        if rq is not None:
            lo, hi = max(lo, rq.lo), min(hi, rq.hi)
        elif name == "relax.take":
            table = const_value(value.args[0])
            if table is not None:
                lo, hi = int(table.min()), int(table.max())
        break
    return min([lo] + extra), max([hi] + extra)


def _requantize_after(acc, users):
    """``(layer name, MUL, ADD, S)`` of the requantize reading ``acc`` (Nones if none)."""
    nxt = users.get(acc, [])
    rq = requant_of(nxt[0].value) if len(nxt) == 1 else None
    if rq is None:
        return None, None, None, None
    return nxt[0].var.name, rq.mul, rq.add, rq.shift
