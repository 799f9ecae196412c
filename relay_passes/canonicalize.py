"""Bring an imported float module into the form the quantization passes read."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

from .fold_batch_norm import FoldBatchNorm
from .ir_utils import const_value, mutate_functions, op_name, shape_of
from .name_tensors import NameTensors
from .rebuild import rewrite_main

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
        if name in _TE_BINARY and len(args) == 2 and const_value(args[1]) is not None \
                and const_value(args[1]).size == 1:
            return _TE_BINARY[name](args[0], args[1])
        return call


@tvm.transform.module_pass(opt_level=0, name="ClipKernelsToOps")
class ClipKernelsToOps:
    """``call_tir(maximum|minimum, (x, c))`` with a scalar constant ``c`` becomes
    ``R.maximum(x, c)`` / ``R.minimum(x, c)``, so a Clip imported from ONNX is an operator the
    quantization passes can fold into a requantize or a lookup table."""

    def transform_module(self, mod, ctx):
        return mutate_functions(_ClipKernelsToOps(mod), mod)


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
            if isinstance(value, relax.TupleGetItem) and value.index == 0 \
                    and value.tuple_value in inputs:
                return inputs[value.tuple_value]
            return bb.emit(value, b.var.name)

        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))


# ONNX's variadic Sum/Max/Min/Mean arrive as reduce(stack(broadcast_to(x_i)), axis=0).
_PAIRWISE = {"relax.sum": relax.op.add, "relax.max": relax.op.maximum,
             "relax.min": relax.op.minimum, "relax.mean": relax.op.add}


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
            if name in _PAIRWISE and value.args[0] in stacks and not value.attrs.keepdims \
                    and [int(a) for a in value.attrs.axis] == [0]:
                parts = stacks[value.args[0]]
                out = parts[0]
                for part in parts[1:]:
                    out = bb.emit(_PAIRWISE[name](out, part))
                if name == "relax.mean":
                    out = bb.emit(relax.op.divide(out, relax.const(float(len(parts)), b.var.ty.dtype)))
                return out
            new = bb.emit(value, b.var.name)
            bindings[new] = value
            return new

        bindings = {}
        return relax.transform.DeadCodeElimination()(rewrite_main(mod, binding))


def _unbroadcast(bindings, var):
    value = bindings.get(var)
    if op_name(value) == "relax.broadcast_to" and \
            shape_of(value.args[0]) == shape_of(var):
        return value.args[0]
    return var


def CanonicalizeForQuantization() -> tvm.transform.Pass:
    """Inference form of a float module, ready for calibration and annotation.

    ``batch_norm`` is decomposed and folded into the preceding conv/dense, constants are
    folded (weights become constants), Clip kernels become operators, unused bindings go
    and every tensor gets a unique name (:class:`NameTensors`). Calibration and :func:`Annotate` must see the same canonical module: tensor
    names are the keys of the calibration ranges.
    """
    return tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            RemoveDropout(),
            UnstackReductions(),
            relax.transform.FoldConstant(),
            ClipKernelsToOps(),
            FoldBatchNorm(),
            relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
            NameTensors(),
        ],
        name="CanonicalizeForQuantization",
    )
