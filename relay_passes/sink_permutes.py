"""Move layout transposes below the epilogue of a layer, out of the way of integer folding."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main

_ELEMENTWISE = {
    "relax.add": relax.op.add,
    "relax.subtract": relax.op.subtract,
    "relax.multiply": relax.op.multiply,
}


@tvm.transform.module_pass(opt_level=0, name="SinkPermutes")
class SinkPermutes:
    """``ConvertLayout`` leaves ``permute_dims`` between an NCHW conv and its NHWC bias and
    quantize; moved below them, the layer is ``quantize(conv + b)`` again::

        permute_dims(x, p) (+|-|*) C     ->  permute_dims(x (+|-|*) C', p),  C' = C^T(argsort p)
        quantize(permute_dims(x, p))     ->  permute_dims(quantize(x), p)    (per-tensor quantize)

    with the constant ``C`` brought to ``x``'s layout. The transposes then move int8 values.
    """

    def transform_module(self, mod, ctx):
        permuted = {}  # new permute_dims var -> (its input, axes)

        def binding(bb, b, value):
            name = op_name(value)
            if name == "relax.permute_dims" and value.attrs.axes is not None:
                new = bb.emit(value, b.var.name)
                permuted[new] = (value.args[0], [int(a) for a in value.attrs.axes])
                return new
            args = list(value.args) if name in _ELEMENTWISE or name == "relax.quantize" else []
            swapped = name in ("relax.add", "relax.multiply") and args[0] not in permuted
            if swapped:
                args = args[::-1]
            if args and args[0] in permuted:
                x, axes = permuted[args[0]]
                if name == "relax.quantize" and const_value(args[1]).size == 1:
                    inner = bb.emit(relax.Call(value.op, [x] + args[1:], value.attrs))
                    return bb.emit(relax.op.permute_dims(inner, axes), b.var.name)
                c = const_value(args[1]) if name in _ELEMENTWISE else None
                if c is not None and c.ndim <= len(axes):
                    full = c.reshape((1,) * (len(axes) - c.ndim) + c.shape)
                    moved = relax.const(np.ascontiguousarray(np.transpose(full, np.argsort(axes))))
                    pair = [moved, x] if swapped else [x, moved]
                    inner = bb.emit(_ELEMENTWISE[name](*pair))
                    new = bb.emit(relax.op.permute_dims(inner, axes), b.var.name)
                    permuted[new] = (inner, axes)
                    return new
            return bb.emit(value, b.var.name)

        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))
