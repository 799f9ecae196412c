"""Bring an imported QDQ module (a model another tool quantized) into the form FoldToInteger
reads."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.rebuild import bindings_of
from tvm_intq.relay_passes.clip_kernels_to_ops import ClipKernelsToOps
from tvm_intq.relay_passes.constant_last import ConstantLast
from tvm_intq.relay_passes.name_tensors import NameTensors
from tvm_intq.relay_passes.quantize_into_concat import QuantizeIntoConcat
from tvm_intq.relay_passes.remove_dropout import RemoveDropout
from tvm_intq.relay_passes.sink_permutes import SinkPermutes
from tvm_intq.relay_passes.unstack_reductions import UnstackReductions
from tvm_intq.relay_passes.weights_as_constants import WeightsAsConstants


def weight_constants(func: relax.Function) -> set:
    """The int8 constants ``Qw`` that a conv2d/matmul reads as its weight through
    ``dequantize(Qw, ...)``."""
    defs = {b.var: b.value for b in bindings_of(func)}
    found = set()
    for value in defs.values():
        if op_name(value) not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        w = defs.get(value.args[1])
        c = const_value(w.args[0]) if op_name(w) == "relax.dequantize" else None
        if c is not None and str(c.dtype) == "int8":
            found.add(w.args[0])
    return found


@expr_functor.mutator
class _LiftWeights(PyExprMutator):
    """``dequantize(Qw)`` of a weight constant reads a new parameter instead."""

    def __init__(self, mod, weights: set):
        super().__init__(mod)
        self.weights = weights
        self.lifted = []  # (param, constant)

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if op_name(call) != "relax.dequantize" or call.args[0] not in self.weights:
            return call
        param = relax.Var(f"intq_weight_{len(self.lifted)}", call.args[0].ty)
        self.lifted.append((param, call.args[0].value))
        return relax.Call(call.op, [param] + list(call.args[1:]), call.attrs, call.ty_args)


@tvm.transform.module_pass(opt_level=0, name="CanonicalizeQDQ")
class CanonicalizeQDQ:
    """Inference form of an imported QDQ module, keeping its int8 weights as they are.

    Data movement on the int8 weights goes into the constants (:class:`WeightsAsConstants`),
    layout transposes move below a layer's bias and quantize (:class:`SinkPermutes`), a
    constant operand of add/multiply goes second (:class:`ConstantLast`), a quantize of a
    concat with unquantized inputs goes into the concat (:class:`QuantizeIntoConcat`), and
    the float constants fold as in :func:`CanonicalizeForQuantization` (BatchNorm decomposed,
    Clip kernels back to operators, dropout removed, unique tensor names), but constant folding
    must not fold the int8 weights into float ones: a conv2d/matmul weight ``dequantize(Qw)``
    reads ``Qw`` from a temporary parameter while ``FoldConstant`` runs, bound back after::

        dequantize(Qw, sw, 0, axis)                  ->  unchanged (FoldToInteger reads Qw, sw)
        reshape(dequantize(Qb_int32, sx*sw, 0))      ->  constant b = sx*sw*Qb   (a float bias)
        batch_norm(x, dequantize(...), ...)          ->  x * c + d, constants c, d per channel

    No weight is re-quantized and no scale or zero point changes.
    """

    def transform_module(self, mod, ctx):
        mod = WeightsAsConstants()(mod)
        lifter = _LiftWeights(mod, weight_constants(mod["main"]))
        func = lifter.visit_expr(mod["main"])
        params = list(func.params) + [p for p, _ in lifter.lifted]
        lifted = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
        lifted["main"] = relax.Function(params, func.body, func.ret_ty, func.is_pure, func.attrs)
        folded = tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                RemoveDropout(),
                UnstackReductions(),
                relax.transform.FoldConstant(),
                ClipKernelsToOps(),
                relax.transform.FoldConstant(),
                SinkPermutes(),
                ConstantLast(),
                QuantizeIntoConcat(),
                relax.transform.CanonicalizeBindings(),
                relax.transform.DeadCodeElimination(),
            ]
        )(lifted)
        kept = {p.name for p in folded["main"].params}
        bound = relax.transform.BindParams(
            "main", {p.name: c for p, c in lifter.lifted if p.name in kept}
        )(folded)
        return NameTensors()(bound)
