"""``intq.requantize``: one named Relax operator for the requantize of S2 Eqs. 11-14,

    intq.requantize(acc, MUL, ADD, S, lo, hi) = astype(clip((astype(acc, int64) * MUL + ADD) >> S,
                                                            lo, hi), int8)

``acc`` an integer tensor (a conv/dense accumulator, or int8 codes to bring to another scale),
``MUL``/``ADD``/``S`` int64 constants broadcast against it (one per output channel, or one),
``lo``/``hi`` the clip bounds (a folded ReLU/ReLU6/clip narrows them). The folding emits it
(:mod:`.integer_kernels`), the int8 packing (``schedules/pack_int8``) finds it by this name,
and ``LegalizeOps`` lowers it to the plain integer operators above, which FuseOps fuses into
the layer's kernel. The numpy reference is :meth:`tvm_intq.core.intmath.Requant.apply`.

TVM has no requantize operator (QNN is gone); this registers ours from Python: the op, its
output type, its purity and its legalization.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R
from tvm.relax.transform.legalize_ops.common import register_legalize

from tvm_intq.core.intmath import Requant
from tvm_intq.relay_passes.analysis.ir_utils import const_value, prim_value

NAME = "intq.requantize"


def _infer_type(call, _ctx):
    ty = call.args[0].ty
    if ty.shape is None:
        return relax.TensorType(ndim=ty.ndim, dtype="int8")
    return relax.TensorType(ty.shape, "int8")


def _legalize(_bb, call):
    acc, mul, add, shift, lo, hi = call.args
    x = R.right_shift(R.add(R.multiply(R.astype(acc, "int64"), mul), add), shift)
    return R.astype(R.clip(x, lo, hi), "int8")  # legalized in turn by LegalizeOps


def _register() -> None:
    if NAME in tvm.ir.Op.list_op_names():  # registered already (a module reload)
        return
    tvm.ir.register_op_attr(NAME, "FInferType", _infer_type)  # creates the op
    op = tvm.ir.Op.get(NAME)
    op.set_num_inputs(6)
    op.set_attr("FPurity", True)
    op.set_attr("TScriptPrinterName", NAME)
    register_legalize(NAME, _legalize)


_register()


def _int64(value) -> relax.Constant:
    return relax.const(np.asarray(value).astype(np.int64), "int64")


def requantize(acc, rq: Requant) -> relax.Call:
    """The call ``intq.requantize(acc, MUL, ADD, S, lo, hi)`` for the constants of ``rq``."""
    return relax.Call(
        tvm.ir.Op.get(NAME),
        [acc, _int64(rq.mul), _int64(rq.add), _int64(rq.shift),
         relax.prim_value(int(rq.lo)), relax.prim_value(int(rq.hi))],
    )  # fmt: skip


def is_requantize(call) -> bool:
    return isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op) and call.op.name == NAME


def requant_of(call) -> Requant | None:
    """The :class:`Requant` an ``intq.requantize`` call applies (its constants as they are
    shaped in the IR), or None for any other call."""
    if not is_requantize(call):
        return None
    mul, add, shift = (const_value(a) for a in call.args[1:4])
    if mul is None or add is None or shift is None:
        return None
    return Requant(mul, add, shift, int(prim_value(call.args[4])), int(prim_value(call.args[5])))
