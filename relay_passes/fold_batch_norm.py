"""Fold BatchNorm (and any per-output-channel affine) into the preceding conv/dense."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

from tvm_intq.relay_passes.analysis.ir_utils import (
    channel_axis_of,
    const_value,
    linear_layer_axes,
    mutate_functions,
    op_name,
)
from tvm_intq.relay_passes.analysis.rebuild import users_of


@expr_functor.mutator
class _Folder(PyExprMutator):
    def __init__(self, mod, uses: dict):
        super().__init__(mod)
        # new var -> (layer call without bias, folded float weight, folded bias)
        self.linear = {}
        self.uses = uses  # original var -> number of uses

    def _as_linear(self, var):
        value = self.lookup_binding(var) if isinstance(var, relax.Var) else None
        while isinstance(value, relax.Var):  # the mutator binds the old name to our new var
            var, value = value, self.lookup_binding(value)
        if var in self.linear:
            return self.linear[var]
        if value is not None and linear_layer_axes(value) is not None:
            return value, const_value(value.args[1]).astype(np.float64), None
        return None

    def visit_call_(self, call):
        # A layer whose value has other users stays as it is: folding the constant into it
        # would duplicate the layer (hardswish's x + 3 next to its x; PP-OCR's rec has one per
        # block) and leave nothing of the original graph to map fine-tuned weights back to.
        single = [isinstance(a, relax.Var) and self.uses.get(a, 0) == 1 for a in call.args]
        call = super().visit_call_(call)
        name = op_name(call)
        if name not in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
            return call
        a, b = call.args
        if const_value(a) is not None and name in ("relax.add", "relax.multiply"):
            a, b = b, a
            single.reverse()
        c = const_value(b)
        layer = self._as_linear(a) if c is not None and single[0] else None
        if layer is None:
            return call
        layer_call, w, bias = layer
        out_axis, w_axis = linear_layer_axes(layer_call)
        ndim = len(layer_call.ty.shape)
        axis = channel_axis_of(c, ndim)
        if axis is False or (axis is not None and axis != out_axis):
            return call
        channels = w.shape[w_axis]
        c = (
            np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (channels,))
            if c.size > 1
            else np.full(channels, float(c.reshape(())))
        )
        bias = np.zeros(channels) if bias is None else bias
        w_shape = [1] * w.ndim
        w_shape[w_axis] = -1
        if name == "relax.add":
            bias = bias + c
        elif name == "relax.subtract":
            bias = bias - c
        elif name == "relax.multiply":
            w, bias = w * c.reshape(w_shape), bias * c
        else:
            w, bias = w / c.reshape(w_shape), bias / c
        dtype = str(layer_call.args[1].ty.dtype)
        new_layer = relax.Call(
            layer_call.op, [layer_call.args[0], relax.const(w.astype(dtype))], layer_call.attrs
        )
        b_shape = [1] * ndim
        b_shape[out_axis] = -1
        out = self.builder_.emit(new_layer)
        folded = self.builder_.emit(
            relax.op.add(out, relax.const(bias.astype(dtype).reshape(b_shape)))
        )
        self.linear[folded] = (new_layer, w, bias)
        return folded


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """Fold per-output-channel affine chains after a conv2d/dense into its weight and bias.

    Run after ``DecomposeOpsForInference`` + ``FoldConstant``, which turn an inference
    BatchNorm into ``(y - mean) / sqrt(var + eps) * gamma + beta``::

        y = conv2d(x, W) [+ b] (+|-|*|/ c_k)*      ->      conv2d(x, W') + b'

    with ``c_k`` scalars or per-output-channel constants, each step only while the value it
    reads has no other user. The int8 weights are then quantized from ``W'`` (the usual order:
    fold, then quantize).
    """

    def transform_module(self, mod, ctx):
        uses = {
            v: len(u)
            for _, func in mod.functions_items()
            if isinstance(func, relax.Function)
            for v, u in users_of(func).items()
        }
        return mutate_functions(_Folder(mod, uses), mod)
