"""``prelu(x, a) -> max(x, 0) + a * min(x, 0)``: PReLU in ops that tabulate per channel."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import channel_axis_of, const_value, op_name, shape_of
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


def _per_channel(alpha: np.ndarray, shape: tuple) -> np.ndarray | None:
    """``alpha`` (broadcast to ``shape``) as a constant that varies along one axis at most,
    shaped to broadcast against ``shape``; None if it varies along several."""
    full = np.broadcast_to(alpha, shape)
    axes = [
        a for a in range(len(shape)) if shape[a] > 1 and np.ptp(full, axis=a).max(initial=0) > 0
    ]
    if len(axes) > 1:
        return None
    if not axes:
        return np.asarray(full.reshape(-1)[:1].reshape((1,) * len(shape)))
    index = tuple(slice(None) if a == axes[0] else slice(0, 1) for a in range(len(shape)))
    return np.ascontiguousarray(full[index])


@tvm.transform.module_pass(opt_level=0, name="DecomposePRelu")
class DecomposePRelu:
    """Write PReLU with a constant slope as elementwise ops of one tensor::

        prelu(x, a, axis)  ->  maximum(x, 0) + a' * minimum(x, 0)

    with ``a'`` the slope shaped along ``axis``; exact in float (one of the two terms is 0).
    The quantization analysis makes such a chain one lookup table, per channel when the slope
    is (:mod:`~tvm_intq.relay_passes.analysis.quant_points`); ``relax.nn.prelu`` itself has no
    integer form.

    TVM's TFLite frontend flattens the tensor first, ``reshape(prelu(reshape(x, [-1]),
    broadcast(a), 0), shape)``, which would make one table per *element*: the slope is read
    back in ``x``'s own shape (the reshapes stay, as data movement).
    """

    def transform_module(self, mod, ctx):
        defs = {}  # new var -> its value

        def binding(bb, b, value):
            alpha = const_value(value.args[1]) if op_name(value) == "relax.nn.prelu" else None
            x = value.args[0] if alpha is not None else None
            shape = shape_of(x) if x is not None else None
            if shape is not None:
                src = defs.get(x)
                axis = int(value.attrs.axis) % len(shape)
                slope = np.reshape(alpha, [-1 if i == axis else 1 for i in range(len(shape))])
                if op_name(src) == "relax.reshape" and len(shape) == 1:
                    inner = shape_of(src.args[0])  # TFLite's flattened form
                    if inner is not None and alpha.size == int(np.prod(inner)):
                        x, shape, slope = src.args[0], inner, alpha.reshape(inner)
                a = _per_channel(slope, shape)
                if a is not None and channel_axis_of(a, len(shape)) is not False:
                    new = _decomposed(bb, x, a.astype(alpha.dtype), str(alpha.dtype))
                    if shape_of(new) != shape_of(b.var):
                        new = bb.emit(relax.op.reshape(new, shape_of(b.var)))
                    defs[new] = None
                    return new
            new = bb.emit(value, b.var.name)
            defs[new] = value
            return new

        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))


def _decomposed(bb, x, alpha: np.ndarray, dtype: str):
    zero = relax.const(np.zeros((), dtype))
    positive = bb.emit(relax.op.maximum(x, zero))
    negative = bb.emit(relax.op.multiply(bb.emit(relax.op.minimum(x, zero)), relax.const(alpha)))
    return bb.emit(relax.op.add(positive, negative))
