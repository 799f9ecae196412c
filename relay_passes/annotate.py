"""Insert quantize/dequantize pairs at the quantization points, as the scheme says."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import intmath
from ..errors import IntqError
from ..schemes import Scheme, get_scheme
from .fold_batch_norm import linear_layer_axes
from .ir_utils import const_value
from .quant_points import analyze, tensor_args
from .rebuild import rewrite_main, substitute


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
        relax.const(qw), relax.const(sw.astype(np.float32)),
        relax.const(np.zeros(sw.shape, np.int8)), axis=w_axis, out_dtype=str(w.dtype))


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
        ``"hybrid-asym"`` (default) or ``"symmetric"``.
    """

    def __init__(self, ranges: dict, scheme: str | Scheme = "hybrid-asym"):
        self.ranges = dict(ranges)
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme

    def params_for(self, var) -> intmath.QParams:
        if var.name not in self.ranges:
            raise IntqError(f"no calibration range for tensor '{var.name}': calibrate the module "
                            "returned by CanonicalizeForQuantization, then annotate that module")
        return self.scheme.activation(*self.ranges[var.name])

    def transform_module(self, mod, ctx):
        plan = analyze(mod["main"])
        points = set(plan.points)
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
            outside = {new_of[a]: dq_of[new_of[a]] for a in reads
                       if a in new_of and new_of[a] in dq_of and not plan.in_same_group(a, b.var)}
            value = substitute(value, outside)
            if node is not None and node.role == "anchor" and linear_layer_axes(node.call):
                args = list(value.args)
                args[1] = quantized_weight(self.scheme, node.call)
                value = relax.Call(value.op, args, value.attrs, value.ty_args)
            new = bb.emit(value, b.var.name)
            new_of[b.var] = new
            if b.var in points:
                dq_of[new] = qdq(bb, new, self.params_for(b.var), b.var.name)
            return new

        def output(bb, out):
            return substitute(out, dq_of)

        return rewrite_main(mod, binding, output, start)
