"""``call_tir(maximum|minimum, (x, c))`` -> ``R.maximum`` / ``R.minimum``: a Clip imported from
ONNX as an operator the quantization passes can fold."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

from tvm_intq.relay_passes.analysis.ir_utils import const_value, mutate_functions

# The ONNX frontend lowers Clip (opset >= 11) straight to TE ``maximum``/``minimum`` kernels;
# these are the PrimFunc names it emits, turned back into Relax operators here.
_TE_BINARY = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}


@expr_functor.mutator
class _ClipKernelsToOps(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != tvm.ir.Op.get("relax.call_tir"):
            return call
        callee = call.args[0]
        name = callee.name_hint.rstrip("0123456789_") if isinstance(callee, relax.GlobalVar) else ""
        args = call.args[1].fields
        if (
            name in _TE_BINARY
            and len(args) == 2
            and const_value(args[1]) is not None
            and const_value(args[1]).size == 1
        ):
            return _TE_BINARY[name](args[0], args[1])
        return call


@tvm.transform.module_pass(opt_level=0, name="ClipKernelsToOps")
class ClipKernelsToOps:
    """``call_tir(maximum|minimum, (x, c))`` with a scalar constant ``c`` becomes
    ``R.maximum(x, c)`` / ``R.minimum(x, c)``, so a Clip imported from ONNX is an operator the
    quantization passes can fold into a requantize or a lookup table."""

    def transform_module(self, mod, ctx):
        return mutate_functions(_ClipKernelsToOps(mod), mod)
