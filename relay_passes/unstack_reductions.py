"""ONNX's variadic Sum/Max/Min/Mean (``reduce(stack(...), axis=0)``) as pairwise operators."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import op_name, shape_of
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main

# ONNX's variadic Sum/Max/Min/Mean arrive as reduce(stack(broadcast_to(x_i)), axis=0).
_PAIRWISE = {
    "relax.sum": relax.op.add,
    "relax.max": relax.op.maximum,
    "relax.min": relax.op.minimum,
    "relax.mean": relax.op.add,
}


@tvm.transform.module_pass(opt_level=0, name="UnstackReductions")
class UnstackReductions:
    """``reduce(stack([x_1, ..., x_n]), axis=0)  ->  x_1 op x_2 op ... op x_n`` (divided by n
    for a mean), with ``broadcast_to`` dropped where it does not change the shape: an ONNX
    Sum of two activations (a residual add) becomes the add the integer passes know."""

    def transform_module(self, mod, ctx):
        stacks = {}  # new stack var -> its fields

        def binding(bb, b, value):
            name = op_name(value)
            if name == "relax.stack" and int(value.attrs.axis) == 0:
                new = bb.emit(value, b.var.name)
                stacks[new] = [_unbroadcast(bindings, f) for f in value.args[0].fields]
                return new
            if (
                name in _PAIRWISE
                and value.args[0] in stacks
                and not value.attrs.keepdims
                and [int(a) for a in value.attrs.axis] == [0]
            ):
                parts = stacks[value.args[0]]
                out = parts[0]
                for part in parts[1:]:
                    out = bb.emit(_PAIRWISE[name](out, part))
                if name == "relax.mean":
                    out = bb.emit(
                        relax.op.divide(out, relax.const(float(len(parts)), b.var.ty.dtype))
                    )
                return out
            new = bb.emit(value, b.var.name)
            bindings[new] = value
            return new

        bindings = {}
        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))


def _unbroadcast(bindings, var):
    value = bindings.get(var)
    if op_name(value) == "relax.broadcast_to" and shape_of(value.args[0]) == shape_of(var):
        return value.args[0]
    return var
