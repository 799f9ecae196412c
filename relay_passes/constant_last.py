"""``add(C, x) -> add(x, C)``, ``multiply(C, x) -> multiply(x, C)`` for a constant ``C``."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


@tvm.transform.module_pass(opt_level=0, name="ConstantLast")
class ConstantLast:
    """``add(C, x) -> add(x, C)`` and ``multiply(C, x) -> multiply(x, C)`` for a constant ``C``
    (both commute; ``subtract`` and ``divide`` do not and keep their order).

    PyTorch's ``linear`` imports as ``add(bias, matmul(x, W))``, and FoldToInteger reads a
    layer's bias as the second operand of its add (the float path gets this order from
    :class:`~tvm_intq.relay_passes.FoldBatchNorm`; a pt2e program goes through
    :class:`~tvm_intq.relay_passes.CanonicalizeQDQ`, which runs this pass).
    """

    def transform_module(self, mod, ctx):
        def binding(bb, b, value):
            if (
                op_name(value) in ("relax.add", "relax.multiply")
                and const_value(value.args[0]) is not None
                and const_value(value.args[1]) is None
            ):
                value = relax.Call(
                    value.op, [value.args[1], value.args[0]], value.attrs, value.ty_args
                )
            return bb.emit(value, b.var.name)

        return rewrite_main(mod, binding)
