"""Bring an imported QDQ module (a model another tool quantized) into the form FoldToInteger
reads."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name, shape_of
from tvm_intq.relay_passes.analysis.rebuild import bindings_of, rewrite_main
from tvm_intq.relay_passes.clip_kernels_to_ops import ClipKernelsToOps
from tvm_intq.relay_passes.constant_last import ConstantLast
from tvm_intq.relay_passes.name_tensors import NameTensors
from tvm_intq.relay_passes.quantize_into_concat import QuantizeIntoConcat
from tvm_intq.relay_passes.remove_dropout import RemoveDropout
from tvm_intq.relay_passes.sink_permutes import SinkPermutes
from tvm_intq.relay_passes.unstack_reductions import UnstackReductions

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
