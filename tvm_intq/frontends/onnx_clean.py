"""Clean an ONNX model the way runtimes read it, before TVM's frontend sees it.

Exporters leave things in a graph that ONNX Runtime reads without a word but that stop the
ONNX checker or TVM's frontend (one line each, all built into small models in
``tests/test_onnx_clean.py``):

* a graph output or ``value_info`` whose type has no shape (the checker requires one):
  :func:`repair_types` drops the shape-less ``value_info`` and lets onnx's shape inference
  fill the outputs in;
* dynamic dimensions (``N``, ``batch``) that ``--input-shape`` fixes: written into the graph
  inputs, stale ``value_info`` dropped, shapes inferred again;
* shape arithmetic on a fixed input (``Shape -> Gather -> Mul -> Concat -> Reshape/Split``),
  which TVM imports as symbolic shape expressions it cannot always lower ("emit_te now only
  supports Tensor that has ShapeExpr shape", "cannot handle ShapeExpr inputs"):
  :func:`fold_shape_arithmetic` evaluates every node whose inputs are constants (``Shape`` of
  a statically shaped tensor is one), as ONNX Runtime's basic-level constant folding does,
  with onnx's own reference evaluator; only integer tensors and small float ones are folded,
  so weights reach TVM exactly as they were (its ``FoldConstant`` folds the rest);
* ``Constant`` nodes become initializers and ``Identity`` chains are bypassed;
* opset < 13: :func:`upgrade_opset` converts with onnx's version converter (used when TVM
  rejects the model at its own opset).

Quantize/dequantize nodes are never folded: a pre-quantized model keeps its int8 weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

#: Folding a float tensor larger than this is left to TVM (it may be a weight: its bytes then
#: reach TVM untouched, computed by TVM's own FoldConstant as before).
SMALL_FLOAT = 1024
#: Never evaluated here: their constant inputs are what a pre-quantized model is made of.
_KEEP = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def repair_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-less tensor types fixed in place (before the checker): ``value_info`` entries
    without a shape are dropped, graph outputs without one get the inferred shape."""
    keep = [v for v in model.graph.value_info if _has_shape(v)]
    if len(keep) != len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)
    if all(_has_shape(o) for o in model.graph.output):
        return model
    inferred = _infer(model)
    by_name = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if not _has_shape(out) and out.name in by_name and _has_shape(by_name[out.name]):
            out.type.CopyFrom(by_name[out.name].type)
    return model


def _has_shape(vi) -> bool:
    t = vi.type
    return not t.HasField("tensor_type") or t.tensor_type.HasField("shape")


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is a help, never a requirement
        return model


def clean(model: onnx.ModelProto, input_shapes: dict | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with its inputs fixed to ``input_shapes`` (``{name: dims}``),
    Constant nodes as initializers, Identity chains bypassed and shape arithmetic folded."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if input_shapes:
        _fix_inputs(out, input_shapes)
    _constants_to_initializers(out)
    _bypass_identities(out)
    return fold_shape_arithmetic(out)


def _fix_inputs(model: onnx.ModelProto, shapes: dict) -> None:
    changed = False
    for inp in model.graph.input:
        dims = shapes.get(inp.name)
        ttype = inp.type.tensor_type
        if dims is None or len(ttype.shape.dim) != len(dims):
            continue
        for d, value in zip(ttype.shape.dim, dims):
            if not d.HasField("dim_value") or d.dim_value != int(value):
                d.Clear()
                d.dim_value = int(value)
                changed = True
    if changed:  # shapes recorded for the dynamic model may contradict the fixed ones
        del model.graph.value_info[:]
        for o in model.graph.output:
            for d in o.type.tensor_type.shape.dim:
                if not d.HasField("dim_value"):
                    d.Clear()


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    graph = model.graph
    nodes, inits = [], []
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and not node.domain else None
        if value is None:
            nodes.append(node)
        else:
            inits.append(numpy_helper.from_array(value, node.output[0]))
    if inits:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)


def _constant_value(node) -> np.ndarray | None:
    try:
        (value,) = ReferenceEvaluator(_single_node_model(node, {}, 21)).run(None, {})
    except Exception:  # noqa: BLE001 - sparse or unusual constants: leave the node to TVM
        return None
    return np.asarray(value)


def _bypass_identities(model: onnx.ModelProto) -> None:
    """Readers of ``Identity(x)`` read ``x`` (a graph output keeps its Identity, and name)."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    alias = {}
    kept = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        if node.op_type == "Identity" and not node.domain and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    if alias:
        del graph.node[:]
        graph.node.extend(kept)


def fold_shape_arithmetic(model: onnx.ModelProto, rounds: int = 4) -> onnx.ModelProto:
    """Evaluate, in place of TVM, each node whose inputs are all known: initializers, folded
    values, and ``Shape``/``Size`` of a tensor whose shape inference made static. Integer and
    boolean results and float results of at most :data:`SMALL_FLOAT` elements become
    initializers; the rest stays. Repeats while shape inference learns more from what was
    folded (a ``Reshape`` whose shape was computed has a static output only then)."""
    opset = opset_of(model)
    for _ in range(rounds):
        inferred = _infer(model)
        shapes = _static_shapes(inferred)
        values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        graph_outputs = {o.name for o in model.graph.output}
        folded, kept = {}, []
        for node in model.graph.node:
            result = _fold(node, values, shapes, opset)
            if result is None or any(o in graph_outputs for o in node.output):
                kept.append(node)
                continue
            for name, value in zip(node.output, result):
                values[name] = value
                folded[name] = value
        if not folded:
            return model
        used = {i for n in kept for i in n.input} | graph_outputs
        del model.graph.node[:]
        model.graph.node.extend(kept)
        model.graph.initializer.extend(
            numpy_helper.from_array(v, k) for k, v in folded.items() if k in used
        )
    return model


def _static_shapes(model: onnx.ModelProto) -> dict:
    shapes = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def _fold(node, values: dict, shapes: dict, opset: int) -> list | None:
    """The node's outputs, computed, or None when it is not to be folded."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _KEEP | _RANDOM:
        return None
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return None
    if node.op_type in ("Shape", "Size") and node.input[0] not in values:
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), np.int64)]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.array(shape[start:end], np.int64)]
    inputs = [n for n in node.input if n]
    if not inputs or any(n not in values for n in inputs):
        return None
    try:
        feeds = {n: values[n] for n in inputs}
        result = ReferenceEvaluator(_single_node_model(node, feeds, opset)).run(None, feeds)
    except Exception:  # noqa: BLE001 - whatever the reference cannot compute stays for TVM
        return None
    result = [np.asarray(r) for r in result]
    if any(r.dtype.kind == "f" and r.size > SMALL_FLOAT for r in result):
        return None
    return result


def _single_node_model(node, feeds: dict, opset: int) -> onnx.ModelProto:
    """``node`` alone as a model at the graph's own opset (an op's meaning depends on it)."""
    inputs = [
        onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v)
        )
        for n, v in feeds.items()
    ]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


def upgrade_opset(model: onnx.ModelProto, version: int = 13) -> onnx.ModelProto | None:
    """``model`` converted to ``version`` by onnx's version converter (None if it cannot)."""
    if opset_of(model) >= version:
        return None
    try:
        return onnx.version_converter.convert_version(model, version)
    except Exception:  # noqa: BLE001 - the converter lacks adapters for some ops
        return None
