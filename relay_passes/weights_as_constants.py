"""The data movement an importer puts on an int8 weight, moved into the constant."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name, shape_of
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main

# Data movement an importer puts on a weight (ONNX Gemm's transpose, TFLite's HWIO and
# depthwise reshapes, ConvertLayout's permutes): applied to the int8 constant instead.
_MOVES = {
    "relax.permute_dims": lambda call, w: np.transpose(
        w, None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
    ),
    "relax.reshape": lambda call, w, shape: w.reshape(shape),
}


def _moved_axis(move, axis: int, shape) -> int | None:
    """Where the per-channel axis of a weight goes under a data movement (None: it splits)."""
    along = [-1 if i == axis else 1 for i in range(len(shape))]
    tag = np.broadcast_to(np.arange(shape[axis]).reshape(along), shape)
    moved = move(tag)
    varying = [i for i in range(moved.ndim) if moved.shape[i] > 1 and np.ptp(moved, axis=i).any()]
    if len(varying) != 1 or moved.shape[varying[0]] != shape[axis]:
        return None
    return varying[0]


@tvm.transform.module_pass(opt_level=0, name="WeightsAsConstants")
class WeightsAsConstants:
    """Move the data movement on an int8 weight into its constant::

        move(C)                              ->  C' = move(C)                  (int8 constant)
        move(dequantize(C, s, zp, axis))     ->  dequantize(move(C), s, zp, axis')

    with ``move`` a ``permute_dims``/``reshape`` and ``axis'`` where the per-channel axis
    goes (left as is when a reshape splits it). Conv2d/matmul then read ``dequantize(Qw)``
    of a constant, the weight form FoldToInteger reads.
    """

    def transform_module(self, mod, ctx):
        dequantized = {}  # new var -> its dequantize(C, ...) call with an int8 constant C

        def binding(bb, b, value):
            name = op_name(value)
            if name in _MOVES:
                c = const_value(value.args[0])
                extra = [tuple(shape_of(b.var))] if name == "relax.reshape" else []

                def move(w):
                    return _MOVES[name](value, w, *extra)

                if c is not None and c.dtype == np.int8:
                    return relax.const(move(c))
                dq = dequantized.get(value.args[0])
                if dq is not None:
                    c, scale = const_value(dq.args[0]), const_value(dq.args[1])
                    axis = int(dq.attrs.axis) % c.ndim
                    new_axis = 0 if scale.size == 1 else _moved_axis(move, axis, c.shape)
                    if new_axis is not None:
                        value = relax.op.dequantize(
                            relax.const(move(c)),
                            dq.args[1],
                            dq.args[2],
                            axis=new_axis,
                            out_dtype=str(dq.attrs.out_dtype),
                        )
                        name = "relax.dequantize"
            new = bb.emit(value, b.var.name)
            if (
                name == "relax.dequantize"
                and const_value(value.args[0]) is not None
                and const_value(value.args[0]).dtype == np.int8
            ):
                dequantized[new] = value
            return new

        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))
