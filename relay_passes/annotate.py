"""Insert quantize/dequantize pairs at the quantization points, as the scheme says."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.core import intmath
from tvm_intq.core.schemes import Scheme, get_scheme
from tvm_intq.errors import IntqError
from tvm_intq.relay_passes.analysis.ir_utils import const_value, linear_layer_axes
from tvm_intq.relay_passes.analysis.quant_points import analyze, held_layer_bias, tensor_args
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main, substitute


def qdq(bb, x, params: intmath.QParams, name: str):
    """Emit ``dequantize(quantize(x))`` with per-tensor params; returns the dequantized var."""
    scale = relax.const(np.float32(params.scale))
    zp = relax.const(np.int8(params.zero_point))
    q = bb.emit(relax.op.quantize(x, scale, zp, axis=-1, out_dtype="int8"), f"{name}_q")
    return bb.emit(relax.op.dequantize(q, scale, zp, axis=-1, out_dtype="float32"), f"{name}_dq")


def quantized_weight(scheme: Scheme, call):
    """``dequantize(Qw)`` replacing the float constant weight of a conv2d/matmul."""
    _, w_axis = linear_layer_axes(call)
    w = const_value(call.args[1])
    qw, sw = scheme.weights(w, w_axis)
    return relax.op.dequantize(
        relax.const(qw),
        relax.const(sw.astype(np.float32)),
        relax.const(np.zeros(sw.shape, np.int8)),
        axis=w_axis,
        out_dtype=str(w.dtype),
    )


@tvm.transform.module_pass(opt_level=0, name="Annotate")
class Annotate:
    """Quantize ``main`` as a QDQ graph: the float program with its quantization made explicit.

    At every quantization point ``t`` (see :mod:`quant_points`) and for every user outside
    ``t``'s group::

        t                 ->      dequantize(quantize(t, s, zp), s, zp)

    with ``(s, zp) = scheme.activation(*ranges[t])``, and each conv2d/dense constant weight
    ``W -> dequantize(Qw, sw, 0, axis=out_channel)`` with per-channel symmetric ``Qw``.
    The result still runs in float (a fake-quantized model); :class:`FoldToInteger` turns it
    into integer arithmetic.

    Parameters
    ----------
    ranges : dict[str, tuple[float, float]]
        Clipping range of every quantization point, by tensor name (from calibration on the
        same canonical module).
    scheme : str or Scheme
        ``"hybrid-asym"`` (default), ``"symmetric"`` or ``"pow2"``. A scheme whose
        :meth:`~tvm_intq.core.schemes.Scheme.bias` returns a value (pow2) also replaces each
        conv/dense bias by the value the integer program will add.
    float_layers : iterable of str
        Quantization points to leave unquantized (hybrid precision, S0's H-PTQ): no
        quantize/dequantize at the tensor, and the group computing it keeps its float weights.
        The layers that read it then get a float input, so they compute in float too (their
        own outputs are quantized again unless listed): :class:`FoldToInteger` leaves all of
        them float and :func:`float_ops` lists them.
    """

    def __init__(self, ranges: dict, scheme: str | Scheme = "hybrid-asym", float_layers=()):
        self.ranges = dict(ranges)
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        self.float_layers = set(float_layers)

    def params_for(self, var) -> intmath.QParams:
        if var.name not in self.ranges:
            raise IntqError(
                f"no calibration range for tensor '{var.name}': calibrate the module "
                "returned by CanonicalizeForQuantization, then annotate that module"
            )
        return self.scheme.for_tensor(var.name).activation(*self.ranges[var.name])

    def transform_module(self, mod, ctx):
        plan = analyze(mod["main"])
        unknown = self.float_layers - {v.name for v in plan.points}
        if unknown:
            raise IntqError(
                f"float layer(s) {', '.join(sorted(unknown))} are not quantization "
                f"points (known: {', '.join(v.name for v in plan.points)})"
            )
        points = {v for v in plan.points if v.name not in self.float_layers}
        float_groups = {plan.nodes[v].group for v in plan.points if v.name in self.float_layers}
        self._group_point = {
            plan.nodes[v].group: v.name for v in plan.points if plan.nodes[v].group >= 0
        }
        dq_of: dict = {}  # new var of a quantization point -> its dequantized var
        new_of: dict = {}  # old var -> new var

        def start(bb, params):
            for old, new in params.items():
                new_of[old] = new
                if old in points:
                    dq_of[new] = qdq(bb, new, self.params_for(old), old.name)

        def binding(bb, b, value):
            node = plan.nodes.get(b.var)
            reads = tensor_args(b.value) if isinstance(b.value, relax.Call) else []
            outside = {
                new_of[a]: dq_of[new_of[a]]
                for a in reads
                if a in new_of and new_of[a] in dq_of and not plan.in_same_group(a, b.var)
            }
            value = substitute(value, outside)
            if (
                node is not None
                and node.role == "anchor"
                and linear_layer_axes(node.call)
                and node.group not in float_groups
            ):
                args = list(value.args)
                args[1] = quantized_weight(self._scheme_of(node), node.call)
                value = relax.Call(value.op, args, value.attrs, value.ty_args)
            elif node is not None and node.role == "epilogue" and node.group not in float_groups:
                value = self._scheme_bias(plan, points, node, value)
            new = bb.emit(value, b.var.name)
            new_of[b.var] = new
            if b.var in points:
                dq_of[new] = qdq(bb, new, self.params_for(b.var), b.var.name)
            return new

        def output(bb, out):
            return substitute(out, dq_of)

        return rewrite_main(mod, binding, output, start)

    def _scheme_of(self, node) -> Scheme:
        """The scheme of the quantization point that ends ``node``'s group."""
        return self.scheme.for_tensor(self._group_point.get(node.group, ""))

    def _scheme_bias(self, plan, points, node, value):
        """``value`` (a bias add/subtract after a conv/dense) with the bias the scheme holds."""
        held = held_layer_bias(
            plan,
            node,
            self._scheme_of(node),
            lambda src: self.params_for(src).scale if src in points else None,
        )
        if held is None:
            return value
        args = list(value.args)
        args[1] = relax.const(held)
        return relax.Call(value.op, args, value.attrs, value.ty_args)
