"""``GateQuantization``: one fake-quantized model that holds several quantizations at once,
each point's choice a run-time input (the searches of ``tvm_intq.search`` build it once and
run it per candidate instead of compiling one model per candidate).

For candidates ``k = 0..K-1`` (a scheme and its calibration ranges each) and the quantization
points ``p`` of the prepared module, ``main`` takes one more input, ``gates``
(``float32[len(points) * K]``, row ``p`` for point ``p``), and computes::

    t   ->  t + sum_k g[p, k] * (dequantize_k(quantize_k(t)) - t)     every value read outside
                                                                      p's group (S2 Eq. 1-2)
    W   ->  W + sum_k g[p, k] * (Qw_k * sw_k - W)                     each conv/dense weight of
                                                                      p's group (S2 Eq. 22)
    b   ->  b + sum_k g[p, k] * (b_k - b)                             its bias, where scheme k
                                                                      holds it rounded (pow2)

``g = 0`` everywhere is exactly the float model; a one-hot row per point picks that point's
quantization: with every row picking candidate ``k`` it is ``Annotate(ranges_k, scheme_k)``'s
QDQ model (the same quantize/dequantize, weights and biases); ``g[p] = 0`` keeps ``p`` (and the
weights of its layer) float, as ``Annotate(..., float_layers=[p])`` does.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.core.schemes import Scheme, get_scheme
from tvm_intq.relay_passes.analysis.ir_utils import const_value, linear_layer_axes
from tvm_intq.relay_passes.analysis.quant_points import (
    analyze,
    held_layer_bias,
    layer_bias,
    tensor_args,
)
from tvm_intq.relay_passes.analysis.rebuild import bindings_of, substitute


@tvm.transform.module_pass(opt_level=0, name="GateQuantization")
class GateQuantization:
    """``candidates``: ``[(scheme or scheme name, {tensor: (lo, hi)}), ...]``; ``gates``: the
    name of the new input. :attr:`points` holds the point names in gate-row order once the
    pass ran."""

    def __init__(self, candidates, gates: str = "quant_gates"):
        self.candidates = [
            (get_scheme(s) if isinstance(s, str) else s, ranges) for s, ranges in candidates
        ]
        self.gates = gates
        self.points: list[str] = []

    def transform_module(self, mod, ctx):
        func = mod["main"]
        plan = analyze(func)
        self.points = [v.name for v in plan.points]
        row = {v: i for i, v in enumerate(plan.points)}
        k = len(self.candidates)
        group_point = {plan.nodes[v].group: v for v in plan.points if plan.nodes[v].group >= 0}

        def params(j, point):  # candidate j's quantization of a point
            scheme, ranges = self.candidates[j]
            return scheme.for_tensor(point.name).activation(*ranges[point.name])

        params_in = [relax.Var(p.name, p.ty) for p in func.params]
        gates = relax.Var(self.gates, relax.TensorType((len(self.points) * k,), "float32"))
        vmap = dict(zip(func.params, params_in))
        mixed = {}  # new var of a point -> its gated fake-quantized value
        bb = relax.BlockBuilder()
        with bb.function(
            "main", params_in + [gates], attrs=dict(func.attrs) if func.attrs else None
        ):
            with bb.dataflow():

                def gate(i, j):
                    return bb.emit(
                        relax.op.take(gates, relax.const(i * k + j, "int64"), axis=0, mode="clip")
                    )

                def mix(exact, deltas, i):  # exact + sum_j gate(i, j) * delta_j
                    out = exact
                    for j, delta in enumerate(deltas):
                        out = bb.emit(relax.op.add(out, relax.op.multiply(gate(i, j), delta)))
                    return out

                def quantized(var, new):
                    deltas = []
                    for j in range(k):
                        p = params(j, var)
                        s, zp = relax.const(np.float32(p.scale)), relax.const(np.int8(p.zero_point))
                        q = bb.emit(relax.op.quantize(new, s, zp, axis=-1, out_dtype="int8"))
                        dq = bb.emit(relax.op.dequantize(q, s, zp, axis=-1, out_dtype="float32"))
                        deltas.append(bb.emit(relax.op.subtract(dq, new)))
                    mixed[new] = mix(new, deltas, row[var])

                def constant_mix(value, held, i):  # a constant with one candidate value each
                    deltas = [relax.const((h - value).astype(value.dtype)) for h in held]
                    return mix(relax.const(value), deltas, i)

                for old, new in vmap.items():
                    if old in row:
                        quantized(old, new)
                for b in bindings_of(func):
                    value = substitute(b.value, vmap)
                    if isinstance(value, relax.Var):
                        vmap[b.var] = value
                        continue
                    node = plan.nodes.get(b.var)
                    if isinstance(b.value, relax.Call):
                        outside = {
                            vmap[a]: mixed[vmap[a]]
                            for a in tensor_args(b.value)
                            if a in vmap and vmap[a] in mixed and not plan.in_same_group(a, b.var)
                        }
                        value = substitute(value, outside)
                    point = None if node is None else group_point.get(node.group)
                    if point is not None and node.role == "anchor" and linear_layer_axes(node.call):
                        w = const_value(node.call.args[1])
                        held = [self._weight(j, point, w, node.call) for j in range(k)]
                        value = _with_arg(value, 1, constant_mix(w, held, row[point]))
                    elif point is not None and node.role == "epilogue":
                        found = layer_bias(plan, node)
                        if found is not None:
                            bias = found[1]
                            held = [self._bias(j, point, plan, node, params) for j in range(k)]
                            value = _with_arg(value, 1, constant_mix(bias, held, row[point]))
                    new = bb.emit(value, b.var.name)
                    vmap[b.var] = new
                    if b.var in row:
                        quantized(b.var, new)
                out = bb.emit_output(substitute(substitute(func.body.body, vmap), mixed))
            bb.emit_func_output(out)
        gated = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
        gated["main"] = bb.get()["main"]
        return gated

    def _scheme(self, j: int, point) -> Scheme:
        return self.candidates[j][0].for_tensor(point.name)

    def _weight(self, j: int, point, w: np.ndarray, call) -> np.ndarray:
        """Candidate j's fake-quantized weight ``Qw * sw`` of the layer computing ``point``."""
        _, w_axis = linear_layer_axes(call)
        qw, sw = self._scheme(j, point).weights(w, w_axis)
        shape = [1] * w.ndim
        shape[w_axis] = -1
        return qw.astype(np.float64) * np.asarray(sw).reshape(shape)

    def _bias(self, j: int, point, plan, node, params) -> np.ndarray:
        """The bias candidate j's integer program adds (the float one where it keeps it)."""
        held = held_layer_bias(plan, node, self._scheme(j, point), lambda p: params(j, p).scale)
        return const_value(node.call.args[1]) if held is None else held


def _with_arg(call, index: int, arg):
    args = list(call.args)
    args[index] = arg
    return relax.Call(call.op, args, call.attrs, call.ty_args)
