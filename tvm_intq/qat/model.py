"""A torch module that *is* the integer program in its forward pass, trainable by backprop.

:class:`QatModel` is built from the canonical Relax module
(:func:`tvm_intq.compiler.steps.prepare` of the imported ONNX model, the module calibration
and ``Annotate`` read) rather than from a torch definition of the network: any model TVM
imports can be fine-tuned, and the graph,
its quantization points and the layer groups (:func:`~tvm_intq.relay_passes.analyze`) are
the compiler's own. Every conv/dense weight and bias of that module becomes a parameter.

Forward, binding by binding (the Annotate form of the graph)::

    surrogate  = the float op in torch (TORCH_OPS), reading the quantized value of every
                 quantization point outside its own group, weights as the strategy says
    t (point)  = value: the int8 codes the integer program computes for t, dequantized
                 gradient: the surrogate's, clipped to t's representable range

The codes come from :mod:`.integer_layers` (requantize constants, lookup tables, rounding:
:mod:`tvm_intq.core.intmath`; int8 weights and biases: the scheme) whenever the strategy has every
weight quantized (:attr:`Strategy.integer`); then the output equals the compiled program's
bit for bit. While weights are partly float (alpha < 1, an incremental stage < 1) no integer
program exists, and each point is the surrogate quantized with :func:`intmath.quantize`.
Activation ranges stay those of calibration (the compiled program's scales and zero points).
"""

from __future__ import annotations

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

from tvm_intq.core import intmath
from tvm_intq.core.schemes import Scheme, get_scheme, held_bias
from tvm_intq.errors import IntqError
from tvm_intq.qat import integer_layers as L
from tvm_intq.qat.fake_quant import ValueFrom, as_compiled, codes_of, quantize_f32, quantized
from tvm_intq.qat.strategies import Ste, Strategy
from tvm_intq.qat.torch_ops import TORCH_OPS
from tvm_intq.relay_passes import analyze
from tvm_intq.relay_passes.analysis.ir_utils import (
    const_value,
    linear_layer_axes,
    op_name,
    prim_value,
    shape_of,
)
from tvm_intq.relay_passes.analysis.lookup_tables import NUMPY_OPS, build_table, region_function
from tvm_intq.relay_passes.analysis.quant_points import CLAMPS, clamp_bounds, tensor_args
from tvm_intq.relay_passes.analysis.rebuild import bindings_of


class QatModel(nn.Module):
    """The canonical module ``prepared`` with the quantization ``ranges`` and ``scheme`` of
    its integer program, as a trainable torch module (see the module docstring).

    ``model(x)`` takes the model's (single) input as a float32 tensor with any batch size
    and returns its (single) output (one sample at a time when the graph folds its batch
    axis into another, :attr:`batched` False). ``model.weight`` / ``model.bias`` hold the
    parameters by the name of the conv/dense (bias add) they belong to.
    """

    def __init__(
        self,
        prepared,
        ranges: dict,
        scheme: str | Scheme = "hybrid-asym",
        strategy: Strategy | None = None,
    ):
        super().__init__()
        func = prepared["main"]
        self.prepared, self.ranges = prepared, dict(ranges)
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        self.strategy = strategy or Ste()
        # The ONNX model export() writes the trained weights back into (prepare_qat sets it).
        self.origin = None
        self.plan = analyze(func)
        bindings = [(b.var, b.value) for b in bindings_of(func)]
        aliases = {v: value for v, value in bindings if isinstance(value, relax.Var)}  # gv = x
        self.bindings = [(v, value) for v, value in bindings if v not in aliases]
        self.defs = dict(self.bindings)
        if len(func.params) != 1 or not isinstance(func.body.body, relax.Var):
            raise IntqError("QAT takes a model with one input and one output")
        self.input, self.output = func.params[0], func.body.body
        while self.output in aliases:
            self.output = aliases[self.output]
        unsupported = sorted(
            {
                op_name(c) or type(c).__name__
                for _, c in self.bindings
                if op_name(c) not in TORCH_OPS
            }
        )
        if unsupported:
            raise IntqError(f"QAT cannot run these operators in torch: {', '.join(unsupported)}")
        missing = [v.name for v in self.plan.points if v.name not in self.ranges]
        if missing:
            raise IntqError(f"no calibration range for tensor(s) {', '.join(missing)}")
        # Annotate's parameters (the pow2 bias is held with these) and the compiled ones.
        self.qparams = {
            v: self.scheme.for_tensor(v.name).activation(*self.ranges[v.name])
            for v in self.plan.points
        }
        self.weight, self.bias = nn.ParameterDict(), nn.ParameterDict()
        self.layers = {}  # conv/dense var -> (w_axis, bias-add var or None)
        for var, call in self.bindings:
            node = self.plan.nodes.get(var)
            if node is not None and node.role == "anchor" and linear_layer_axes(call):
                self.weight[var.name] = _parameter(const_value(call.args[1]))
                self.layers[var] = [linear_layer_axes(call)[1], None]
            elif node is not None and node.role == "epilogue" and self._bias_of(var) is not None:
                anchor = call.args[0]
                self.bias[var.name] = _parameter(const_value(call.args[1]))
                self.layers[anchor][1] = var
        self._tables = {}  # point var -> lookup table (fixed: ranges and op constants are)
        # The module has batch 1; a batch runs at once only if axis 0 stays the batch axis
        # throughout (a reshape may fold it into another axis, e.g. (1, T, C) -> (T, C)).
        self.batched = all(_keeps_batch_axis(v, c) for v, c in self.bindings)

    # -----------------------------------------------------------------------------------------
    def _bias_of(self, var):
        """The anchor of a bias add/subtract epilogue right after a conv/dense, else None."""
        call = self.defs[var]
        if (
            op_name(call) not in ("relax.add", "relax.subtract")
            or const_value(call.args[1]) is None
        ):
            return None
        anchor = self.plan.nodes.get(call.args[0])
        return (
            call.args[0]
            if anchor is not None and anchor.role == "anchor" and linear_layer_axes(anchor.call)
            else None
        )

    def _source_point(self, var):
        """The quantization point a layer's input reads, through data movement (or None)."""
        while var in self.plan.nodes and self.plan.nodes[var].role == "passthrough":
            var = tensor_args(self.plan.nodes[var].call)[0]
        return var if var in self.qparams else None

    def quantized_layer(self, var):
        """``(Qw, sw, bias)`` of a conv/dense as the integer program holds them: the scheme's
        int8 weights of the current parameter, float32 scales, and the bias the program adds
        (float32, the scheme's held form for pow2; None without a bias)."""
        w_axis, bias_var = self.layers[var]
        w = self.weight[var.name].detach().numpy()
        qw, sw = self.scheme.for_tensor(self._point_of(var).name).weights(w, w_axis)
        bias = None
        if bias_var is not None:
            b = self.bias[bias_var.name].detach().numpy()
            src = self._source_point(tensor_args(self.defs[var])[0])
            sign = -1.0 if op_name(self.defs[bias_var]) == "relax.subtract" else 1.0
            held = (
                None
                if src is None
                else held_bias(
                    self.scheme.for_tensor(self._point_of(var).name),
                    b,
                    self.qparams[src].scale,
                    sw,
                    linear_layer_axes(self.defs[var])[0],
                    len(shape_of(var)),
                    sign,
                )
            )
            bias = b if held is None else held
        return qw, sw.astype(np.float32), bias

    def _point_of(self, var):
        """The quantization point that ends ``var``'s group (its scheme is the group's; the
        last one, as Annotate picks it)."""
        group = self.plan.nodes[var].group
        return [p for p in self.plan.points if self.plan.nodes[p].group == group][-1]

    # -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = {var: self.quantized_layer(var) for var in self.layers}
        if self.batched or len(x) == 1:
            return self._run(x, layers)
        return torch.cat([self._run(x[i : i + 1], layers) for i in range(len(x))])

    def _run(self, x: torch.Tensor, layers: dict) -> torch.Tensor:
        integer = self.strategy.integer
        env = {}  # var -> value as a reader inside its group sees it (float)
        quant = {}  # var -> (dequantized value, compiled QParams) for int8 tensors
        p = as_compiled(self.qparams[self.input]) if self.input in self.qparams else None
        env[self.input] = x
        if p is not None:
            quant[self.input] = (quantized(x, quantize_f32(x.detach().numpy(), p), p), p)
        for var, call in self.bindings:
            args = [self._arg(a, var, env, quant, layers) for a in call.args]
            value = TORCH_OPS[op_name(call)](call, *args)
            node = self.plan.nodes[var]
            if node.role == "passthrough" and tensor_args(call)[0] in quant:
                quant[var] = (value, quant[tensor_args(call)[0]][1])  # int8 values, moved
            elif var in self.qparams:
                p = as_compiled(self.qparams[var])
                codes = (
                    self._integer_codes(var, value, p, quant, layers)
                    if integer
                    else intmath.quantize(value.detach().numpy(), p.scale, p.zero_point).astype(
                        np.int64
                    )
                )
                quant[var] = (quantized(value, codes, p), p)
            env[var] = value
        return quant[self.output][0] if self.output in quant else env[self.output]

    def _arg(self, a, user, env, quant, layers):
        if isinstance(a, relax.Var):
            if a in quant and not self.plan.in_same_group(a, user):
                return quant[a][
                    0
                ]  # Annotate: readers outside the group see dequantize(quantize(a))
            return env[a]
        if isinstance(a, relax.Tuple):
            return [self._arg(f, user, env, quant, layers) for f in a.fields]
        if isinstance(a, relax.ShapeExpr):
            return tuple(int(v) for v in a.values)
        c = const_value(a)
        if c is None and isinstance(a, tvm.ir.Constant):  # a scalar attribute (clip bounds)
            return prim_value(a)
        if c is None:
            raise IntqError(f"QAT: unsupported argument {type(a).__name__} of '{user.name}'")
        call = self.defs[user]
        if user in self.layers and a.same_as(call.args[1]):
            qw, sw, _ = layers[user]
            # relax.dequantize(Qw, sw, 0) in float32, as the program's weight reads
            wq = torch.from_numpy(qw.astype(np.float32) * _along(sw, qw.ndim, self.layers[user][0]))
            return self.strategy.weight(user.name, self.weight[user.name], wq)
        if user.name in self.bias and a.same_as(call.args[1]):  # pow2 holds it (STE)
            held = layers[self._bias_of(user)][2]
            return ValueFrom.apply(
                self.bias[user.name], torch.from_numpy(np.asarray(held, np.float32))
            )
        return torch.from_numpy(np.asarray(c))

    # -----------------------------------------------------------------------------------------
    def _integer_codes(self, var, value, out, quant, layers) -> np.ndarray:
        """The int8 codes (int64) the integer program computes for quantization point ``var``."""
        node = self.plan.nodes[var]

        def q(v):
            t, p = quant[v]
            return codes_of(t, p), p

        if node.role == "elementwise":
            if var not in self._tables:
                fn = region_function(var, node.source, self.defs.get)
                self._tables[var] = build_table(
                    fn, quant[node.source][1], out, len(shape_of(node.source))
                )
            table, axis = self._tables[var]
            return L.lookup(q(node.source)[0], table, axis)
        lo_real, hi_real, call = -np.inf, np.inf, self.defs[var]
        while op_name(call) in CLAMPS and node.role != "float":
            lo, hi = clamp_bounds(call)
            lo_real, hi_real = max(lo_real, lo), min(hi_real, hi)
            var = call.args[0]
            call = self.defs[var]
        bias_sign = 1.0
        if var.name in self.bias:
            bias_sign = -1.0 if op_name(call) == "relax.subtract" else 1.0
            var = call.args[0]
            call = self.defs[var]
        name = op_name(call)
        lo, hi = intmath.relu_bounds(out, lo_real, hi_real)
        if node.role == "float" or name is None:
            return quantize_f32(value.detach().numpy(), out).astype(np.int64)
        if var in self.layers:
            qw, sw, bias = layers[var]
            x, px = q(call.args[0])
            channels = qw.shape[self.layers[var][0]]
            b = (
                None
                if bias is None
                else bias_sign
                * np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (channels,))
            )
            if name == "relax.nn.conv2d_transpose":
                return L.conv_transpose(x, px, qw, sw.astype(np.float64), b, out, lo, hi, call)
            return L.linear(
                x,
                px,
                qw,
                sw.astype(np.float64),
                b,
                out,
                lo,
                hi,
                call.attrs if name == "relax.nn.conv2d" else None,
            )
        if name == "relax.matmul":  # of two activations (attention): no weight
            (a, pa), (b, pb) = q(call.args[0]), q(call.args[1])
            return L.matmul_activations(a, pa, b, pb, out, lo, hi)
        if name in ("relax.add", "relax.subtract") and len(tensor_args(call)) == 2:
            (a, pa), (b, pb) = q(call.args[0]), q(call.args[1])
            return L.add(a, pa, b, pb, out, lo, hi, name == "relax.subtract")
        if name == "relax.concat":
            return L.concat([q(f) for f in call.args[0].fields], out, int(call.attrs.axis))
        if name == "relax.mean":
            x, px = q(call.args[0])
            axes = [int(a) % x.ndim for a in call.attrs.axis]
            return L.mean(x, px, axes, bool(call.attrs.keepdims), out)
        if name == "relax.nn.avg_pool2d":
            x, px = q(call.args[0])
            divisor = int(np.prod([int(k) for k in call.attrs.pool_size]))
            if not call.attrs.count_include_pad and any(int(v) for v in call.attrs.padding):
                a = call.attrs
                divisor = intmath.window_counts(
                    shape_of(call.args[0])[2:], a.pool_size, a.strides, a.dilation, a.padding
                )
            return L.avg_pool2d(x, px, call.attrs, out, divisor)
        if name == "relax.nn.softmax":
            x, px = q(call.args[0])
            return L.softmax(x, px, out, int(call.attrs.axis) % x.ndim)
        if name in NUMPY_OPS and len(tensor_args(call)) == 2:
            (a, pa), (b, pb) = q(call.args[0]), q(call.args[1])
            if name == "relax.multiply":  # as FoldToInteger: one int32 requantize, no table
                return L.multiply_activations(a, pa, b, pb, out)
            if var not in self._tables:
                self._tables[var] = intmath.lut2(
                    lambda ra, rb: NUMPY_OPS[name](call, ra, rb), pa, pb, out
                )
            return L.lookup2(a, b, self._tables[var])
        raise IntqError(f"QAT: no integer form for tensor '{var.name}' ({name})")


def _keeps_batch_axis(var, call) -> bool:
    """Does ``var = call`` keep axis 0 (size 1) as the batch axis?"""
    shape = shape_of(var)
    if not shape or shape[0] != 1:
        return False
    name, attrs = op_name(call), call.attrs
    if name == "relax.permute_dims":
        return attrs.axes is not None and int(attrs.axes[0]) == 0
    if name in ("relax.concat", "relax.nn.softmax"):
        return int(attrs.axis) % len(shape) != 0
    if name in ("relax.mean", "relax.max", "relax.min", "relax.sum", "relax.squeeze"):
        return attrs.axis is not None and all(
            int(a) % len(shape_of(call.args[0])) != 0 for a in attrs.axis
        )
    return True


def _parameter(value: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(value, np.float32)))


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)
