"""``split(x)[i] -> strided_slice(x)``: each part of a split as a slice of its own."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import op_name, shape_of
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


def split_bounds(call) -> list[tuple[int, int]] | None:
    """``[(begin, end), ...]`` of each part of a ``relax.split`` on a static shape, else None."""
    shape = shape_of(call.args[0])
    if shape is None:
        return None
    axis = int(call.attrs.axis) % len(shape)
    size = shape[axis]
    sections = call.attrs.indices_or_sections
    if not hasattr(sections, "__len__"):  # an int (IntImm): n equal sections
        n = int(sections)
        if n <= 0 or size % n:
            return None
        cuts = [size // n * i for i in range(1, n)]
    else:
        cuts = [int(c) for c in sections]
    edges = [0] + [min(max(c, 0), size) for c in cuts] + [size]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


@tvm.transform.module_pass(opt_level=0, name="SplitToSlices")
class SplitToSlices:
    """Rewrite the parts of a split as slices of its input::

        t = split(x, indices, axis); y_i = t[i]   ->   y_i = strided_slice(x, [axis], [b_i], [e_i])

    Exact (both only select values). A split returns a tuple, which the quantization analysis
    does not follow, so the layers after it (YOLO's C2f blocks: ``conv(split(conv(x))[1])``)
    stayed float; a slice moves int8 values with its input's scale like any data movement.
    """

    def transform_module(self, mod, ctx):
        splits = {}  # new split var -> (input, axis, bounds)

        def binding(bb, b, value):
            if op_name(value) == "relax.split":
                bounds = split_bounds(value)
                new = bb.emit(value, b.var.name)
                if bounds is not None:
                    axis = int(value.attrs.axis) % len(shape_of(value.args[0]))
                    splits[new] = (value.args[0], axis, bounds)
                return new
            if isinstance(value, relax.TupleGetItem) and value.tuple_value in splits:
                x, axis, bounds = splits[value.tuple_value]
                begin, end = bounds[value.index]
                sliced = relax.op.strided_slice(x, [axis], [begin], [end], assume_inbound=True)
                return bb.emit(sliced, b.var.name)
            return bb.emit(value, b.var.name)

        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))
