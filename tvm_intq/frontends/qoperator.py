"""QOperator ONNX -> QDQ ONNX: each integer operator becomes dequantize -> float op -> quantize.

ONNX Runtime's QOperator format writes a quantized layer as one operator on int8/uint8
tensors; TVM's ONNX frontend imports none of QLinearConv, QLinearMatMul or ConvInteger.
Rewritten before import into the equivalent QDQ subgraph (the form ONNX Runtime's QDQ format
writes), they take the same path as a QDQ model: ``relax.dequantize -> float op ->
relax.quantize``, which FoldToInteger turns into integer kernels. ``DQ(x, s, z) = s (x - z)``,
``Q(r, s, z) = clip(round(r / s) + z)``; every rewrite is exact in real arithmetic::

    QLinearConv(x, sx, zx, W, sw, zw, sy, zy, B)
        -> Q(Conv(DQ(x, sx, zx), DQ(W, sw, zw, axis=0), B sx sw), sy, zy)
    QLinearMatMul(a, sa, za, b, sb, zb, sy, zy)
        -> Q(MatMul(DQ(a, sa, za), DQ(b, sb, zb, axis=-1)), sy, zy)
    QGemm(A, sa, za, B, sb, zb, C, sy, zy)       -> Q(Gemm(DQ(A), DQ(B), C sa sb), sy, zy)
    QLinearAdd|Mul(A, sA, zA, B, sB, zB, sC, zC) -> Q(DQ(A) + | * DQ(B), sC, zC)
    QLinearConcat(sy, zy, X1, s1, z1, ...)       -> Q(Concat(DQ(X1, s1, z1), ...), sy, zy)
    QLinear<Op>(X, sx, zx, sy, zy)               -> Q(<Op>(DQ(X, sx, zx)), sy, zy)
        for LeakyRelu, Sigmoid, Softmax, GlobalAveragePool, AveragePool
    Cast(ConvInteger(x, W, zx, zw), float) [* c]   -> Conv(DQ(x, 1, zx), DQ(W, c, zw, axis=0))
    Cast(MatMulInteger(a, b, za, zb), float) [* c] -> MatMul(DQ(a, 1, za), DQ(b, c, zb, axis=-1))

(the int32 bias ``B`` of QLinearConv/QGemm has scale ``sx sw`` and zero point 0; ``c`` is a
constant scalar or per-output-channel multiplier, folded into the weight scale). Quantized
outputs keep their tensor names, so data movement on int8 tensors between two QOperator
nodes (MaxPool, Flatten, ...) keeps working. Any other quantized operator raises an
:class:`IntqError` naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tvm_intq.errors import IntqError

QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"

# QLinear<Op> with one quantized input (X, sx, zx, sy, zy) -> the float op (attributes kept,
# except channels_last, which must be 0).
_UNARY = {
    "QLinearLeakyRelu": "LeakyRelu",
    "QLinearSigmoid": "Sigmoid",
    "QLinearSoftmax": "Softmax",
    "QLinearGlobalAveragePool": "GlobalAveragePool",
    "QLinearAveragePool": "AveragePool",
}
_BINARY = {"QLinearAdd": "Add", "QLinearMul": "Mul"}
_DROPPED_ATTRS = {"channels_last", "opset"}


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``Constant`` nodes with a tensor value become initializers (scales and zero points are
    then all found in one place)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    keep = []
    for node in g.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in attrs:
            t = onnx.TensorProto()
            t.CopyFrom(attrs["value"].t)
            t.name = node.output[0]
            g.initializer.append(t)
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    return model


def is_qoperator(node: onnx.NodeProto) -> bool:
    return (
        node.op_type
        in (
            "QLinearConv",
            "QLinearMatMul",
            "QGemm",
            "ConvInteger",
            "MatMulInteger",
            "QLinearConcat",
        )
        or node.op_type in _UNARY
        or node.op_type in _BINARY
    )


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, path: str):
        self.path = path
        self.graph = model.graph
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.names = {n for node in model.graph.node for n in list(node.input) + list(node.output)}
        self.names |= set(self.consts) | {i.name for i in model.graph.input}
        self.consumers: dict = {}
        for node in model.graph.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.nodes: list = []
        self.skip: set = set()  # ids of nodes merged into a rewrite (Cast, Mul after ConvInteger)

    # -- helpers --------------------------------------------------------------------------
    def fail(self, node, why: str):
        raise IntqError(f"{self.path}: {node.op_type} node '{node.name or node.output[0]}': {why}")

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, node, name: str) -> np.ndarray:
        if name not in self.consts:
            self.fail(node, f"input '{name}' must be a constant (an initializer)")
        return self.consts[name]

    def add_const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.consts[name] = np.asarray(value)
        return name

    def emit(self, op, inputs, outputs, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def dq(self, x, scale, zp, axis=None, base=None) -> str:
        out = self.fresh(f"{base or x}_dequantized")
        inputs = [x, scale] + ([zp] if zp else [])
        self.emit(DEQUANTIZE, inputs, [out], **({} if axis is None else {"axis": axis}))
        return out

    def dq_weight(self, node, w, scale, zp, axis) -> str:
        """``DQ(W, scale, zp)`` per channel on ``axis`` when the scale or zero point is a vector."""
        s = np.asarray(self.const(node, scale), np.float32)
        z = np.asarray(self.const(node, zp)) if zp else np.zeros((), self.const(node, w).dtype)
        channels = self.const(node, w).shape[axis]
        if s.size == 1 and z.size == 1:
            return self.dq(w, scale, zp or None, base=w)
        s = np.broadcast_to(s.reshape(-1), (channels,)).astype(np.float32)
        z = np.broadcast_to(z.reshape(-1), (channels,)).astype(z.dtype)
        return self.dq(
            w,
            self.add_const(f"{w}_scale", s),
            self.add_const(f"{w}_zero_point", z),
            axis=axis % self.const(node, w).ndim,
            base=w,
        )

    def q(self, y, scale, zp, out):
        self.emit(QUANTIZE, [y, scale] + ([zp] if zp else []), [out])

    def bias(self, node, b, sa, sb) -> str:
        """An int32 bias with scale ``sa * sb`` (zero point 0) as a float constant."""
        real = (
            self.const(node, b).astype(np.float64)
            * np.asarray(self.const(node, sa), np.float64)
            * np.asarray(self.const(node, sb), np.float64).reshape(-1)
        )
        return self.add_const(f"{b}_float", real.astype(np.float32))

    # -- rewrites -------------------------------------------------------------------------
    def rewrite(self, node):
        i = list(node.input) + [""] * 9
        attrs = {
            a.name: helper.get_attribute_value(a)
            for a in node.attribute
            if a.name not in _DROPPED_ATTRS
        }
        if any(a.name == "channels_last" and helper.get_attribute_value(a) for a in node.attribute):
            self.fail(node, "channels_last=1 is not supported")
        out = node.output[0]
        t = node.op_type
        if t == "QLinearConv":
            y = self.fresh(f"{out}_float")
            inputs = [self.dq(i[0], i[1], i[2]), self.dq_weight(node, i[3], i[4], i[5], 0)]
            if i[8]:
                inputs.append(self.bias(node, i[8], i[1], i[4]))
            self.emit("Conv", inputs, [y], **attrs)
            self.q(y, i[6], i[7], out)
        elif t == "QLinearMatMul":
            y = self.fresh(f"{out}_float")
            b = (
                self.dq_weight(node, i[3], i[4], i[5], -1)
                if i[3] in self.consts
                else self.dq(i[3], i[4], i[5])
            )
            self.emit("MatMul", [self.dq(i[0], i[1], i[2]), b], [y])
            self.q(y, i[6], i[7], out)
        elif t == "QGemm":
            axis = 0 if attrs.get("transB", 0) else 1
            b = (
                self.dq_weight(node, i[3], i[4], i[5], axis)
                if i[3] in self.consts
                else self.dq(i[3], i[4], i[5])
            )
            inputs = [self.dq(i[0], i[1], i[2]), b]
            if i[6]:
                inputs.append(self.bias(node, i[6], i[1], i[4]))
            y = self.fresh(f"{out}_float") if i[7] else out
            self.emit("Gemm", inputs, [y], **attrs)
            if i[7]:
                self.q(y, i[7], i[8], out)
        elif t in _BINARY:
            y = self.fresh(f"{out}_float")
            self.emit(_BINARY[t], [self.dq(i[0], i[1], i[2]), self.dq(i[3], i[4], i[5])], [y])
            self.q(y, i[6], i[7] or self.zero_like(i[2] or i[5]), out)
        elif t in _UNARY:
            y = self.fresh(f"{out}_float")
            self.emit(_UNARY[t], [self.dq(i[0], i[1], i[2])], [y], **attrs)
            self.q(y, i[3], i[4] or self.zero_like(i[2]), out)
        elif t == "QLinearConcat":
            y = self.fresh(f"{out}_float")
            parts = list(node.input)[2:]
            if len(parts) % 3:
                self.fail(node, "inputs are not (tensor, scale, zero point) triples")
            xs = [self.dq(parts[k], parts[k + 1], parts[k + 2]) for k in range(0, len(parts), 3)]
            self.emit("Concat", xs, [y], **attrs)
            self.q(y, i[0], i[1], out)
        else:  # ConvInteger / MatMulInteger
            self.integer_layer(node, i, attrs)

    def zero_like(self, zp_name):
        """An explicit zero point 0 of the same type as a given one (uint8 when none is)."""
        dtype = self.consts[zp_name].dtype if zp_name in self.consts else np.uint8
        return self.add_const("zero_point", np.zeros((), dtype))

    def integer_layer(self, node, i, attrs):
        """``Cast(ConvInteger|MatMulInteger(...), float) [* c]`` -> float layer on dequantized
        integers, with the constant multiplier ``c`` (if any) as the weight scale."""
        conv = node.op_type == "ConvInteger"
        users = self.consumers.get(node.output[0], [])
        if (
            len(users) != 1
            or users[0].op_type != "Cast"
            or helper.get_attribute_value(users[0].attribute[0]) != onnx.TensorProto.FLOAT
        ):
            self.fail(
                node, "its int32 result must go to one Cast to float (as ONNX Runtime writes it)"
            )
        cast = users[0]
        self.skip.add(id(cast))
        out, scale = cast.output[0], np.ones((), np.float32)
        after = self.consumers.get(out, [])
        if len(after) == 1 and after[0].op_type == "Mul":
            other = [n for n in after[0].input if n != out]
            if len(other) == 1 and other[0] in self.consts:
                scale = np.asarray(self.consts[other[0]], np.float32)
                self.skip.add(id(after[0]))
                out = after[0].output[0]
        w = self.const(node, i[1])
        axis = 0 if conv else w.ndim - 1
        channels = w.shape[axis]
        per_channel = _along(
            scale, w.ndim if conv else max(scale.ndim, 1), 1 if conv else -1, channels
        )
        if per_channel is None:
            self.fail(
                node,
                f"the multiplier after it has shape {list(scale.shape)}, not one value "
                f"per output channel ({channels})",
            )
        one = self.add_const("one", np.ones((), np.float32))
        x = self.dq(i[0], one, i[2] or None)
        zw = i[3] or self.add_const(f"{i[1]}_zero_point", np.zeros((), w.dtype))
        s = self.add_const(f"{i[1]}_scale", per_channel)
        wd = self.dq_weight(node, i[1], s, zw, axis)
        self.emit("Conv" if conv else "MatMul", [x, wd], [out], **(attrs if conv else {}))


def _along(c: np.ndarray, ndim: int, axis: int, channels: int):
    """A constant broadcast against an ``ndim``-D tensor as ``channels`` values along ``axis``
    (None when it varies along another axis)."""
    shape = (1,) * (ndim - c.ndim) + tuple(c.shape)
    axis %= ndim
    if (
        len(shape) != ndim
        or any(d != 1 for k, d in enumerate(shape) if k != axis)
        or shape[axis] not in (1, channels)
    ):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float32)


def rewrite_qoperators(model: onnx.ModelProto, path: str = "model") -> onnx.ModelProto:
    """The model with every QOperator node replaced by its QDQ subgraph (see module docstring).
    Raises :class:`IntqError` naming a quantized node it has no rewrite for."""
    model = constants_to_initializers(model)
    r = _Rewriter(model, path)
    for node in model.graph.node:
        if id(node) in r.skip:
            continue
        if is_qoperator(node):
            r.rewrite(node)
        elif node.op_type == "DynamicQuantizeLinear":
            r.fail(
                node,
                "dynamic quantization: its scales are known only at run time; quantize "
                "the model statically, or compile the float model with --calib",
            )
        elif node.domain == "com.microsoft" and node.op_type.startswith("Q"):
            r.fail(node, "no QDQ equivalent is known for this quantized operator")
        else:
            r.nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(r.nodes)
    return model
