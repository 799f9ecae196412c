"""Where a float graph is quantized: the analysis calibration, annotation and reports share.

Every tensor-valued binding of ``main`` gets a *role*:

* ``anchor`` — an op with an integer kernel of its own: conv2d, conv2d_transpose, dense/matmul
  with a constant weight, matmul of two activations, add of two activations, concat, average
  pool, mean (global average pool), softmax, a product of two activations (one int32
  requantize) and any other elementwise op of two different activations (a 256x256 lookup
  table);
* ``epilogue`` — folded into the requantize of the anchor before it: a bias add (after
  conv/dense), relu, clip, maximum/minimum with a scalar (ReLU6 after import);
* ``elementwise`` — part of a lookup-table cluster: elementwise ops whose only non-constant
  input is one quantized tensor (sigmoid, tanh, x*sigmoid(x), hardswish's decomposition, a
  BatchNorm affine with per-channel constants, ...). A whole cluster becomes one table, or one
  requantize with constants per element when it is affine (a detection head's
  ``(anchors - d) * strides``);
* ``passthrough`` — moves or selects int8 values without arithmetic (reshape, transpose, max
  pool, pad with 0, nearest resize, slices): it keeps its input's scale and zero point;
* ``float`` — anything else; its output is still quantized so the rest of the graph stays
  integer, and the integer-only check reports it;
* ``tail`` — a concat on the way to a graph output (through data movement only): its parts
  keep their own scales up to the output (see :func:`_mark_output_tail`).

A *quantization point* is a tensor whose value is stored as int8: a graph input, and the
last tensor of each anchor group, cluster or float op that is used outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import relax

from tvm_intq.core.schemes import held_bias
from tvm_intq.relay_passes.analysis.ir_utils import (
    channel_axis_of,
    const_value,
    is_float,
    linear_layer_axes,
    op_name,
    prim_value,
    returned_vars,
)

PASSTHROUGH = {
    "relax.reshape",
    "relax.permute_dims",
    "relax.squeeze",
    "relax.expand_dims",
    "relax.strided_slice",
    "relax.nn.max_pool1d",
    "relax.nn.max_pool2d",
    "relax.nn.max_pool3d",
    "relax.image.resize2d",
    "relax.nn.pad",
    "relax.flatten",
    "relax.broadcast_to",
}
UNARY = {
    "relax.sigmoid",
    "relax.tanh",
    "relax.exp",
    "relax.log",
    "relax.sqrt",
    "relax.rsqrt",
    "relax.erf",
    "relax.abs",
    "relax.negative",
    "relax.square",
    "relax.nn.relu",
    "relax.nn.relu6",
    "relax.nn.leakyrelu",
    "relax.nn.silu",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.nn.softplus",
    "relax.clip",
    "relax.hard_sigmoid",
}
BINARY = {
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.power",
    "relax.maximum",
    "relax.minimum",
}
#: Elementwise ops that keep a function of one tensor affine, whatever their constants' shape.
AFFINE = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.negative"}
CLAMPS = {"relax.nn.relu", "relax.nn.relu6", "relax.clip", "relax.maximum", "relax.minimum"}
LINEAR = {"relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul"}


@dataclass
class Node:
    var: relax.Var
    call: relax.Call | None
    role: str
    group: int  # anchor group or cluster id; -1 for passthrough/input
    source: relax.Var | None = None  # the cluster's quantized input (elementwise only)
    users: list = field(default_factory=list)


@dataclass
class QuantPlan:
    """The analysis result: node per binding var, and the quantization points in order."""

    nodes: dict
    points: list  # relax.Var, in program order (graph inputs first)
    outputs: set  # vars returned by main

    def in_same_group(self, producer, user) -> bool:
        """Does ``user`` read ``producer`` inside one anchor group or cluster (float,
        unquantized)?"""
        p, u = self.nodes.get(producer), self.nodes.get(user)
        return p is not None and u is not None and p.group >= 0 and p.group == u.group

    def role_of_group(self, var) -> str:
        return self.nodes[var].role


def tensor_args(call) -> list:
    """The Var arguments of a call, with the fields of a tuple argument (concat) spread out."""
    out = []
    for a in call.args:
        if isinstance(a, relax.Tuple):
            out.extend(f for f in a.fields if isinstance(f, relax.Var))
        elif isinstance(a, relax.Var):
            out.append(a)
    return out


def clamp_bounds(call) -> tuple[float, float]:
    """The real interval a clamp of :data:`CLAMPS` keeps (relu: ``[0, inf)``, ...)."""
    name = op_name(call)
    if name == "relax.nn.relu":
        return 0.0, np.inf
    if name == "relax.nn.relu6":
        return 0.0, 6.0
    if name == "relax.clip":
        return prim_value(call.args[1]), prim_value(call.args[2])
    c = float(const_value(call.args[1]).reshape(()))
    return (c, np.inf) if name == "relax.maximum" else (-np.inf, c)


def _scalar_const(e) -> bool:
    v = const_value(e)
    return v is not None and v.size == 1


def is_passthrough(call) -> bool:
    """Does ``call`` only move int8 values (so it keeps its input's scale and zero point)?"""
    name = op_name(call)
    if name == "relax.image.resize2d":
        return str(call.attrs.method) == "nearest_neighbor"
    if name == "relax.nn.pad":
        return str(call.attrs.pad_mode) == "constant" and float(call.attrs.pad_value) == 0.0
    return name in PASSTHROUGH


def _anchor(call) -> bool:
    name = op_name(call)
    if name == "relax.nn.conv2d":
        a = call.attrs
        return (
            const_value(call.args[1]) is not None
            and str(a.data_layout) == "NCHW"
            and str(a.kernel_layout) == "OIHW"
        )
    if name == "relax.matmul":
        w = const_value(call.args[1])
        if w is None:  # a product of two activations (attention's Q.K^T and attn.V)
            return const_value(call.args[0]) is None
        return w.ndim == 2
    if name == "relax.nn.conv2d_transpose":
        return linear_layer_axes(call) is not None
    if name in ("relax.add", "relax.subtract"):
        return (
            len(tensor_args(call)) == 2
            and const_value(call.args[0]) is None
            and const_value(call.args[1]) is None
        )
    if name in ("relax.nn.avg_pool2d", "relax.nn.avg_pool3d"):
        return str(call.attrs.layout) in ("NCHW", "NCDHW") and not call.attrs.ceil_mode
    return name in ("relax.concat", "relax.mean", "relax.nn.softmax")


def analyze(func: relax.Function) -> QuantPlan:
    """Assign roles and find the quantization points of ``func`` (see module docstring)."""
    nodes: dict = {}
    params = [p for p in func.params if is_float(p)]
    for p in params:
        nodes[p] = Node(p, None, "input", -1)
    bindings = [b for block in func.body.blocks for b in block.bindings]
    users: dict = {}
    for b in bindings:
        for a in tensor_args(b.value) if isinstance(b.value, relax.Call) else []:
            users.setdefault(a, []).append(b.var)
    next_group = 0
    clusters = {}  # cluster root var -> group id: one lookup-table cluster per root
    for b in bindings:
        call = b.value
        if not isinstance(call, relax.Call) or not is_float(b.var):
            continue
        name = op_name(call)
        args = tensor_args(call)
        first = nodes.get(args[0]) if args else None
        # Non-tensor arguments (clip bounds, shapes) are attributes, not inputs.
        consts_ok = all(
            isinstance(a, relax.Var) or const_value(a) is not None
            for a in call.args
            if isinstance(a.ty, relax.TensorType)
        )
        if name is None:
            node = Node(b.var, call, "float", next_group)
        elif is_passthrough(call) and first is not None:
            node = Node(b.var, call, "passthrough", -1)
        elif _is_epilogue(call, name, first, nodes, users):
            node = Node(b.var, call, "epilogue", first.group)
        elif _anchor(call) and not (name in BINARY and _cluster_root(args, nodes) is not None):
            # (a sum of two functions of one tensor, PReLU's max(x, 0) + a * min(x, 0), is
            # one lookup table, not an add of two activations)
            node = Node(b.var, call, "anchor", next_group)
        elif (
            (name in UNARY or name in BINARY)
            and args
            and consts_ok
            and _cluster_root(args, nodes) is not None
            and (
                name in AFFINE  # any constant: an affine region folds to one requantize
                or all(
                    channel_axis_of(const_value(a), len(call.ty.shape)) is not False
                    for a in call.args
                    if const_value(a) is not None
                )
            )
        ):
            root = _cluster_root(args, nodes)
            if root not in clusters:
                clusters[root] = next_group
            node = Node(b.var, call, "elementwise", clusters[root], root)
        elif name in BINARY and len(args) == 2 and len(call.args) == 2:
            # Two different activations: a product (a gate) is one int32 requantize, anything
            # else (LRN's x / norm) a 256x256 lookup table.
            node = Node(b.var, call, "anchor", next_group)
        else:
            node = Node(b.var, call, "float", next_group)
        if node.group == next_group:
            next_group += 1
        nodes[b.var] = node
    for var, node in nodes.items():
        node.users = users.get(var, [])
    outputs = returned_vars(func.body.body)
    _mark_output_tail(nodes)
    points = list(params)
    for var, node in nodes.items():
        if node.role in ("input", "passthrough", "tail"):
            continue
        inside = [
            u for u in node.users if nodes.get(u) is not None and nodes[u].group == node.group
        ]
        if var in outputs or len(inside) < len(node.users) or not node.users:
            points.append(var)
    return QuantPlan(nodes, points, outputs)


def _mark_output_tail(nodes: dict) -> None:
    """Give the role ``tail`` to each concat whose value reaches the graph's outputs only
    through data movement and other such concats.

    A detection head concatenates parts of very different ranges into its output (box
    coordinates in pixels, 0-320, beside class probabilities, 0-1); one scale for the whole
    would leave the small part a few int8 steps (0 dB). Nothing integer reads such a concat:
    its parts stay quantization points with their own scales, and the concat (with the data
    movement after it) runs on their dequantized values, the output tail of the program
    (:func:`~tvm_intq.relay_passes.check_integer.float_ops` does not count it as float)."""
    reaches = {}  # var -> does it reach the outputs only through data movement?
    for var in reversed(list(nodes)):
        node = nodes[var]
        readers = [nodes.get(u) for u in node.users]
        # (no reader: returned, through the alias ``gv`` the dataflow block outputs)
        reaches[var] = all(
            r is not None and reaches.get(r.var, False) and r.role in ("passthrough", "tail")
            for r in readers
        )
        if reaches[var] and node.role == "anchor" and op_name(node.call) == "relax.concat":
            node.role, node.group = "tail", -1


def _cluster_root(args, nodes):
    """The one quantized tensor an elementwise op depends on (through its cluster), or None."""
    roots = set()
    for a in args:
        n = nodes.get(a)
        if n is None:
            return None
        roots.add(n.source if n.role == "elementwise" else n.var)
    return roots.pop() if len(roots) == 1 else None


def _is_epilogue(call, name, first, nodes, users) -> bool:
    if first is None or first.role not in ("anchor", "epilogue") or len(users[first.var]) != 1:
        return False
    anchor = _anchor_of(first, nodes)
    anchor_name = op_name(anchor.call)
    if name in ("relax.add", "relax.subtract") and anchor_name in LINEAR and first.role == "anchor":
        value = const_value(call.args[1])
        if value is None or linear_layer_axes(anchor.call) is None:  # no bias: no weight
            return False
        axis = channel_axis_of(value, len(call.ty.shape))  # a bias varies along channels only
        return axis is None or axis == linear_layer_axes(anchor.call)[0]
    if name in CLAMPS and anchor_name in LINEAR | {"relax.add", "relax.subtract"}:
        return name in ("relax.nn.relu", "relax.nn.relu6", "relax.clip") or _scalar_const(
            call.args[1]
        )
    return False


def _anchor_of(node, nodes):
    while node.role == "epilogue":
        node = nodes[tensor_args(node.call)[0]]
    return node


def layer_bias(plan, node):
    """``(anchor node, bias constant)`` when ``node`` is a bias add/subtract right after a
    conv/dense with a constant bias, else None."""
    if op_name(node.call) not in ("relax.add", "relax.subtract"):
        return None
    anchor = plan.nodes.get(node.call.args[0])
    bias = const_value(node.call.args[1])
    if anchor is None or anchor.role != "anchor" or bias is None:
        return None
    return (anchor, bias) if linear_layer_axes(anchor.call) else None


def held_layer_bias(plan, node, scheme, input_scale) -> np.ndarray | None:
    """The bias constant a quantized conv/dense adds in place of ``node``'s (a bias add or
    subtract right after the layer, :func:`layer_bias`), as ``scheme`` holds it
    (:func:`held_bias`); None when the scheme keeps the float bias, ``node`` is no such add,
    or the layer's input is not quantized (``input_scale(point)`` returns None for a point
    left float)."""
    found = layer_bias(plan, node)
    if found is None:
        return None
    anchor, bias = found
    src = tensor_args(anchor.call)[0]
    while src in plan.nodes and plan.nodes[src].role == "passthrough":
        src = tensor_args(plan.nodes[src].call)[0]
    s_in = input_scale(src) if src in plan.points else None
    if s_in is None:
        return None
    acc_axis, w_axis = linear_layer_axes(anchor.call)
    _, sw = scheme.weights(const_value(anchor.call.args[1]), w_axis)
    sign = -1.0 if op_name(node.call) == "relax.subtract" else 1.0
    return held_bias(scheme, bias, s_in, sw, acc_axis, len(anchor.call.ty.shape), sign)
