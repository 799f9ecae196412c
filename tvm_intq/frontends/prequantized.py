"""Models another tool already quantized (ONNX QDQ or QOperator) -> our integer program.

The model's own scales, zero points and int8 weights are kept; nothing is re-calibrated.
Before TVM imports it, the ONNX graph is brought into one form, each step exact:

1. QOperator nodes become QDQ subgraphs (:mod:`tvm_intq.frontends.qoperator`).
2. uint8 quantized tensors become int8: every uint8 value ``q`` and zero point ``zp`` is
   shifted by 128, ``q' = q - 128``, ``zp' = zp - 128``, so ``r = s (q - zp) = s (q' - zp')``
   and ``clip(round(r/s) + zp, 0, 255) - 128 = clip(round(r/s) + zp', -128, 127)``. Between a
   QuantizeLinear and a DequantizeLinear only data movement may touch those tensors (max pool,
   reshape, concat, ...), which commutes with the shift.
3. Weights with a zero point ``zw != 0`` are centred, ``Qw' = Qw - zw``, ``zw' = 0``, when
   ``Qw'`` still fits in int8; otherwise the layer is named in an :class:`IntqError`.

(A fully-integer .tflite model is imported by TVM's TFLite frontend instead,
:mod:`tvm_intq.frontends.tflite`, and a pt2e-quantized ``.pt2`` program by TVM's PyTorch
frontend, :mod:`tvm_intq.frontends.torch`.)
Then TVM's ONNX frontend imports QuantizeLinear/DequantizeLinear as ``relax.quantize`` /
``relax.dequantize``, :class:`~tvm_intq.relay_passes.CanonicalizeQDQ` folds the float
constants (int32 biases, BatchNorm statistics) while keeping the int8 weights, and
:class:`~tvm_intq.relay_passes.FoldToInteger` turns each quantized layer into integer
kernels, as for a model we calibrated ourselves. A QuantizeLinear it cannot fold is named.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_intq.errors import IntqError
from tvm_intq.frontends import torch_frontend
from tvm_intq.frontends.onnx import import_proto, load_onnx
from tvm_intq.frontends.qoperator import DEQUANTIZE, QUANTIZE, is_qoperator, rewrite_qoperators
from tvm_intq.frontends.tflite import import_tflite, is_quantized, load_tflite
from tvm_intq.relay_passes import CanonicalizeQDQ, FoldToInteger
from tvm_intq.relay_passes.analysis.ir_utils import op_name
from tvm_intq.relay_passes.analysis.rebuild import bindings_of

# Ops that only move values: they commute with the uint8 -> int8 shift.
DATA_MOVEMENT = {
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Slice",
    "Identity",
    "Split",
    "Pad",
    "DepthToSpace",
    "SpaceToDepth",
    "Tile",
    "Expand",
    "Gather",
}
LAYERS = {"Conv": 1, "MatMul": 1, "Gemm": 1}  # op -> index of the weight input


def is_prequantized(model: onnx.ModelProto) -> bool:
    """Does the model hold quantization of its own (QDQ or QOperator nodes)?"""
    return any(
        n.op_type in (QUANTIZE, DEQUANTIZE, "DynamicQuantizeLinear")
        or is_qoperator(n)
        or (n.domain == "com.microsoft" and n.op_type.startswith("Q"))
        for n in model.graph.node
    )


def _fail(path, node, why):
    raise IntqError(f"{path}: {node.op_type} node '{node.name or node.output[0]}': {why}")


def shift_uint8(model: onnx.ModelProto, path: str = "model") -> onnx.ModelProto:
    """uint8 quantized tensors -> int8, ``q' = q - 128`` (see module docstring, step 2)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    u8 = {n for n, t in inits.items() if t.data_type == TensorProto.UINT8}
    added = []
    for node in g.node:
        inputs = list(node.input) + [""] * 3
        if node.op_type == QUANTIZE:
            attrs = {a.name: a for a in node.attribute}
            to_u8 = (
                inputs[2] in u8
                if inputs[2]
                else helper.get_attribute_value(attrs["output_dtype"]) in (0, TensorProto.UINT8)
                if "output_dtype" in attrs
                else True
            )
            if to_u8:
                if "output_dtype" in attrs:
                    attrs["output_dtype"].i = TensorProto.INT8
                if not inputs[2]:
                    added.append(_zero_point(node, model))
                u8.add(node.output[0])
        elif not any(i in u8 for i in node.input):
            continue
        elif node.op_type == DEQUANTIZE:
            if not inputs[2]:
                added.append(_zero_point(node, model))
        elif node.op_type in DATA_MOVEMENT:
            u8.update(node.output[:1] if node.op_type != "Split" else node.output)
        else:
            _fail(
                path,
                node,
                "reads a uint8 quantized tensor but is not a quantize, dequantize "
                "or data movement operator",
            )
    for value in list(g.input) + list(g.output):
        if value.name in u8 or value.type.tensor_type.elem_type == TensorProto.UINT8:
            raise IntqError(
                f"{path}: model {'input' if value in g.input else 'output'} "
                f"'{value.name}' is uint8: only float inputs and outputs are supported"
            )
    for name in u8 & set(inits):
        t = inits[name]
        t.CopyFrom(
            numpy_helper.from_array(
                (numpy_helper.to_array(t).astype(np.int16) - 128).astype(np.int8), name
            )
        )
    g.initializer.extend(added)
    for vi in g.value_info:
        if vi.name in u8:
            vi.type.tensor_type.elem_type = TensorProto.INT8
    return model


def _zero_point(node, model) -> onnx.TensorProto:
    """An explicit int8 zero point -128 for a uint8 quantize/dequantize that omitted it (0)."""
    name = f"{node.output[0]}_int8_zero_point"
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    return numpy_helper.from_array(np.array(-128, np.int8), name)


def center_weights(model: onnx.ModelProto, path: str = "model") -> onnx.ModelProto:
    """Weights ``DQ(Qw, sw, zw)`` with ``zw != 0`` -> ``DQ(Qw - zw, sw, 0)`` (step 3)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    for node in g.node:
        if node.op_type not in LAYERS or len(node.input) <= LAYERS[node.op_type]:
            continue
        dq = producers.get(node.input[LAYERS[node.op_type]])
        if (
            dq is None
            or dq.op_type != DEQUANTIZE
            or len(dq.input) < 3
            or not dq.input[2]
            or dq.input[0] not in inits
            or dq.input[2] not in inits
        ):
            continue
        qw = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        zw = numpy_helper.to_array(inits[dq.input[2]]).astype(np.int64)
        if not zw.any():
            continue
        axis = next((helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * qw.ndim
        if zw.size > 1:
            shape[axis % qw.ndim] = -1
        centred = qw - zw.reshape(shape)
        if centred.min() < -128 or centred.max() > 127:
            _fail(
                path,
                node,
                f"weights '{dq.input[0]}' are quantized with non-zero zero points "
                "and Qw - zw leaves int8, which has no exact integer form here; "
                "quantize the weights symmetrically (int8, zero point 0)",
            )
        for k, value in ((0, centred.astype(np.int8)), (2, np.zeros(zw.shape, np.int8))):
            name = f"{dq.input[k]}_centred"
            g.initializer.append(numpy_helper.from_array(value, name))
            dq.input[k] = name
    return model


def check_supported(model: onnx.ModelProto, path: str = "model"):
    """Per-tensor int8 activations only (what the integer program computes), and parameters
    that mean something: every scale finite and > 0 (a zero scale divides by zero, a negative
    one flips signs, NaN/Inf poison every value after it), and zero points in range: int8
    (uint8 ones were shifted into int8, exactly), int32 only on a bias dequantize, one per
    scale. Names the tensor and its node."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    inits.update(_constant_outputs(model))
    for node in model.graph.node:
        if node.op_type not in (QUANTIZE, DEQUANTIZE):
            continue
        scale_name = node.input[1] if len(node.input) > 1 else ""
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = inits.get(zp_name) if zp_name else None
        if zp is not None and zp.dtype not in (np.int8, np.int32):
            _fail(path, node, f"{zp.dtype} quantization: only int8 and uint8 are supported")
        scale = inits.get(scale_name)
        if node.op_type == QUANTIZE and (scale is None or scale.size != 1):
            _fail(path, node, "activations must be quantized per tensor, with a constant scale")
        if scale is not None:
            _check_scale(path, node, scale_name, scale)
        if zp is not None:
            _check_zero_point(path, node, zp_name, zp, scale)


def _constant_outputs(model: onnx.ModelProto) -> dict:
    """``{output: array}`` of Constant nodes holding a tensor (scales may come that way)."""
    out = {}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _check_scale(path, node, name: str, scale: np.ndarray) -> None:
    if scale.dtype.kind != "f":
        _fail(path, node, f"scale '{name}' has dtype {scale.dtype}; a scale is a float")
    flat = scale.reshape(-1).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(flat) | (flat <= 0))
    if bad.size:
        k = int(bad[0])
        where = f"[{k}] " if flat.size > 1 else ""
        _fail(
            path,
            node,
            f"scale '{name}' {where}is {flat[k]:g}: a scale must be finite and > 0",
        )


def _check_zero_point(path, node, name: str, zp: np.ndarray, scale) -> None:
    if scale is not None and zp.size != scale.size and zp.size != 1:
        _fail(
            path,
            node,
            f"zero point '{name}' has {zp.size} values for {scale.size} scales",
        )
    if zp.dtype == np.int32:
        # An int32 zero point belongs to a bias dequantize (folded into a float bias, any
        # value is exact); a QuantizeLinear produces int8 activations.
        if node.op_type == QUANTIZE:
            _fail(path, node, f"zero point '{name}' is int32: quantized activations are int8")
        return


def to_int8_qdq(model: onnx.ModelProto, path: str = "model") -> onnx.ModelProto:
    """Steps 1-3 of the module docstring: an int8 QDQ model with symmetric weights."""
    model = rewrite_qoperators(model, path)
    model = center_weights(shift_uint8(model, path), path)
    check_supported(model, path)
    return model


def is_prequantized_file(path) -> bool:
    """Is the ONNX (or .tflite, or .pt2) model file already quantized?"""
    if Path(path).suffix == ".pt2":
        frontend = torch_frontend()
        return frontend.is_quantized_program(frontend.load_pt2(path))
    if Path(path).suffix == ".tflite":
        return is_quantized(load_tflite(path))
    return is_prequantized(load_onnx(path))


def import_prequantized(path, input_shapes: dict | None = None):
    """A pre-quantized ONNX (or fully-integer .tflite, or pt2e .pt2) model -> ``(integer Relax
    IRModule, ModelInfo)`` with the model's own scales and zero points. Raises
    :class:`IntqError` naming what cannot be folded."""
    _, integer, info = prequantized_modules(path, input_shapes)
    return integer, info


def prequantized_modules(path, input_shapes: dict | None = None):
    """``(qdq module, integer module, ModelInfo)`` of a pre-quantized model: the canonical
    QDQ module (the model as written, computing in float between its quantize/dequantize
    pairs: the reference the integer program is measured against; None for a pt2e ``.pt2``,
    which the torch frontend imports straight to integers) and its integer program."""
    if not is_prequantized_file(path):
        raise IntqError(
            f"{path}: not a quantized model (no QuantizeLinear, DequantizeLinear or "
            "QLinear* node, no int8 tensor); quantize it with --calib"
        )
    if Path(path).suffix == ".pt2":  # pt2e (torchao's convert_pt2e), folded the same way
        integer, info = torch_frontend().import_quantized_pt2(path, input_shapes)
        return None, integer, info
    model = None
    if Path(path).suffix == ".tflite":
        mod, info = import_tflite(path, input_shapes)
    else:
        model = to_int8_qdq(load_onnx(path), str(path))
        mod, info = import_proto(model, str(path), input_shapes)
    qdq = CanonicalizeQDQ()(mod)
    integer = FoldToInteger()(qdq)
    _check_folded(integer, qdq, model, str(path))
    return qdq, integer, info


def _check_folded(integer, qdq, model: onnx.ModelProto | None, path: str):
    """Every quantize of a computed tensor must have become integer arithmetic. The ``k``-th
    ``quantize_k`` of the canonical module is the ``k``-th QuantizeLinear of the ONNX graph
    (the frontend imports nodes in order), which names it in the error."""
    params = set(integer["main"].params)
    defs = {b.var: b.value for b in bindings_of(integer["main"])}
    left = [
        (v, value)
        for v, value in defs.items()
        if op_name(value) == "relax.quantize" and value.args[0] not in params
    ]
    if not left:
        return
    onnx_names = [n.output[0] for n in model.graph.node if n.op_type == QUANTIZE] if model else []
    count = sum(op_name(b.value) == "relax.quantize" for b in bindings_of(qdq["main"]))

    def name(var):
        k = var.name.rsplit("_", 1)[-1]
        if count == len(onnx_names) and var.name.startswith("quantize_") and k.isdigit():
            return f"QuantizeLinear '{onnx_names[int(k)]}'"
        return f"'{var.name}'"

    def producer(value):
        return (op_name(defs.get(value.args[0])) or "input").replace("relax.", "")

    what = "; ".join(f"{name(v)} (of {producer(value)})" for v, value in left)
    raise IntqError(
        f"{path}: {len(left)} quantized layer(s) cannot be folded into integer arithmetic: {what}"
    )
