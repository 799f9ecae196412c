"""``quantize(concat(x_1, ..., x_n)) -> concat(quantize(x_1), ..., quantize(x_n))``."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


@tvm.transform.module_pass(opt_level=0, name="QuantizeIntoConcat")
class QuantizeIntoConcat:
    """Move a per-tensor quantize into the concat it reads, when some part of the concat is
    not a dequantized tensor::

        quantize(concat(x_1, ..., x_n), s, zp)  ->  concat(quantize(x_1, s, zp), ...)

    Exact: concat only moves values and quantize is elementwise with one ``s, zp``.

    PyTorch's XNNPACK quantizer leaves the inputs of a concat unquantized when their producer
    (tanh, leaky_relu) has no annotation of its own: ``concat(tanh(dq(a)), leaky_relu(dq(b)))``.
    Each ``quantize(x_i)`` then folds into a lookup table or a requantize, and the concat moves
    int8 values. A concat of dequantized tensors only is left to FoldToInteger's own concat
    rule.
    """

    def transform_module(self, mod, ctx):
        defs = {}  # new var -> its (new) value

        def binding(bb, b, value):
            parts = None
            scale = const_value(value.args[1]) if op_name(value) == "relax.quantize" else None
            if scale is not None and scale.size == 1:
                src = defs.get(value.args[0])
                if op_name(src) == "relax.concat" and isinstance(src.args[0], relax.Tuple):
                    parts = list(src.args[0].fields)
            if parts and any(op_name(defs.get(p)) != "relax.dequantize" for p in parts):
                quantized = [
                    bb.emit(relax.Call(value.op, [p, *value.args[1:]], value.attrs, value.ty_args))
                    for p in parts
                ]
                axis = int(src.attrs.axis)
                new = bb.emit(relax.op.concat(quantized, axis=axis), b.var.name)
            else:
                new = bb.emit(value, b.var.name)
            defs[new] = value
            return new

        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))
