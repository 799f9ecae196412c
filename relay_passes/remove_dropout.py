"""``dropout(x)[0] -> x``: dropout is the identity at inference."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import op_name
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


@tvm.transform.module_pass(opt_level=0, name="RemoveDropout")
class RemoveDropout:
    """``dropout(x)[0] -> x``: dropout is the identity at inference, and the ONNX frontend
    keeps it as a tuple-valued call that would otherwise cut the integer graph in two."""

    def transform_module(self, mod, ctx):
        inputs = {}  # new dropout var -> its (new) input

        def binding(bb, b, value):
            if op_name(value) == "relax.nn.dropout":
                new = bb.emit(value, b.var.name)
                inputs[new] = value.args[0]
                return new
            if (
                isinstance(value, relax.TupleGetItem)
                and value.index == 0
                and value.tuple_value in inputs
            ):
                return inputs[value.tuple_value]
            return bb.emit(value, b.var.name)

        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))
