"""Our calibrated quantization written back into the ONNX model as a standard QDQ model.

For every tensor our integer program stores as int8 (each quantization point, and the output
of each data-movement op, which keeps its input's parameters) with parameters ``(s, zp)``,
and every conv/dense weight ``W`` of a quantized layer::

    T                      ->  DequantizeLinear(QuantizeLinear(T, s, zp), s, zp)   (int8)
    W (float initializer)  ->  DequantizeLinear(Qw, sw, 0, axis=output channel)    (int8)

with ``Qw, sw`` from the scheme (symmetric per output channel). The float ops in between stay
as they are (biases stay float, as our integer program folds them into ``ADD``), so ONNX
Runtime, or any QDQ consumer, computes what our integer program computes up to its own
rounding.

Our tensors are named after the canonical Relax module (``conv2d_0``, ``add_3``); the
frontend keeps no ONNX names, and canonicalization merges ops (BatchNorm into the conv), so the
names are matched by value: both the canonical module (in TVM) and the ONNX model (in ONNX
Runtime, every tensor exposed) run on a few calibration samples, and each of our tensors maps
to the ONNX tensor of the same shape whose values agree best, within 1e-3 of its largest
magnitude (the first in graph order of equally close ones: a LayerNorm's mean, not the mean
plus its epsilon; an affine's output, not its product before a small bias), or past it to
the last of a chain of single ops that changed not one bit of it on these samples (a clip
that clipped nothing belongs to the layer whose output is ours) and that no other tensor of
ours took first. This is exact for whatever is computed the same way; a tensor of ours with
no ONNX counterpart (e.g. the partial sum of a variadic ONNX ``Sum``) is reported and
left unquantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.steps import calibrate, prepare, run_exposed
from tvm_intq.core.config import QuantConfig
from tvm_intq.core.intmath import QParams
from tvm_intq.core.schemes import get_scheme
from tvm_intq.files import atomic_path
from tvm_intq.frontends import import_model
from tvm_intq.frontends.onnx import load_onnx
from tvm_intq.relay_passes import analyze
from tvm_intq.relay_passes.analysis.quant_points import tensor_args

MATCH_SAMPLES = 4  # calibration samples the two graphs are compared on
MATCH_TOLERANCE = 1e-3  # relative to the tensor's largest magnitude


@dataclass
class ExportResult:
    """What ``export-qdq`` did: the QDQ model, the ranges it holds, and our tensors that have
    no ONNX counterpart (left unquantized in the ONNX model)."""

    model: onnx.ModelProto
    prepared: object  # the canonical Relax module the ranges belong to
    ranges: dict
    tensors: dict = field(default_factory=dict)  # our tensor -> ONNX tensor name
    unmatched: list = field(default_factory=list)


def quantized_tensors(prepared, ranges: dict, scheme) -> dict:
    """``{tensor name: QParams}`` for every int8 tensor of the integer program, in program
    order: quantization points with their calibrated parameters, and data movement outputs
    with their input's."""
    plan = analyze(prepared["main"])
    points = set(plan.points)
    out = {}
    for var, node in plan.nodes.items():
        if var in points:
            out[var.name] = scheme.activation(*ranges[var.name])
        elif node.role == "passthrough":
            src = tensor_args(node.call)[0]
            if src.name in out:
                out[var.name] = out[src.name]
    return out


def export_qdq(
    model_path,
    calib: SampleSet,
    config: QuantConfig | None = None,
    input_shapes: dict | None = None,
) -> ExportResult:
    """Calibrate the float ONNX model on ``calib`` and write our parameters into it as QDQ."""
    config = config or QuantConfig()
    mod, info = import_model(model_path, input_shapes)
    prepared = prepare(mod)
    ranges = calibrate(
        prepared,
        calib,
        config.calibrator,
        config.scheme,
        config.progress,
        **config.calibrator_options,
    )
    model = load_onnx(model_path)
    scheme = get_scheme(config.scheme)
    params = quantized_tensors(prepared, ranges, scheme)
    subset = SampleSet({k: v[:MATCH_SAMPLES] for k, v in calib.arrays.items()})
    tensors, unmatched = match_tensors(model, prepared, list(params), subset, info.batch_size)
    qdq = write_qdq(model, {tensors[n]: params[n] for n in tensors}, scheme)
    return ExportResult(qdq, prepared, ranges, tensors, unmatched)


def match_tensors(model: onnx.ModelProto, prepared, names: list, samples: SampleSet, batch: int):
    """``({our tensor: ONNX tensor}, [our tensors without a counterpart])`` (module docstring)."""
    import onnxruntime as ort

    _, ours = run_exposed(prepared, names, samples, batch)
    inferred = onnx.shape_inference.infer_shapes(model)
    kinds = {
        v.name: v.type.tensor_type.elem_type
        for v in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    order = [i.name for i in model.graph.input] + [
        o
        for n in model.graph.node
        if n.op_type != "Constant"
        for o in n.output
        if kinds.get(o) == TensorProto.FLOAT
    ]
    exposed = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
        for n in order
        if n not in present and n not in {i.name for i in model.graph.input}
    )
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    out_names = [o.name for o in session.get_outputs()]
    theirs: dict = {}
    for feeds, valid in samples.batches(batch):
        values = dict(zip(out_names, session.run(None, feeds)))
        values.update(feeds)
        for n in order:
            theirs.setdefault(n, []).append(np.asarray(values[n])[:valid])
    theirs = {n: np.concatenate(v) for n, v in theirs.items()}
    tensors, unmatched = {}, []
    for name in names:
        a = ours[name].astype(np.float64)
        tol = MATCH_TOLERANCE * max(float(np.max(np.abs(a))), 1e-6)
        diffs = [
            (float(np.max(np.abs(theirs[n] - a))), k)
            for k, n in enumerate(order)
            if theirs[n].shape == a.shape
        ]
        best = min(diffs, default=(np.inf, -1))  # the closest, the first of equals
        if best[0] > tol:
            unmatched.append(name)
        else:
            tensors[name] = order[best[1]]
    # Down a chain of ops that changed nothing on these samples (a clip that clipped
    # nothing, after a conv whose group ends with it): the group's last tensor is ours.
    readers: dict = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    taken = set(tensors.values())
    for name, match in tensors.items():
        while len(readers.get(match, [])) == 1 and len(readers[match][0].output) == 1:
            nxt = readers[match][0].output[0]
            if nxt in taken or nxt not in theirs or not np.array_equal(theirs[nxt], theirs[match]):
                break
            match = nxt
        tensors[name] = match
        taken.add(match)
    return tensors, unmatched


def write_qdq(model: onnx.ModelProto, params: dict, scheme) -> onnx.ModelProto:
    """QuantizeLinear + DequantizeLinear on each ONNX tensor in ``params`` ({name: QParams}),
    int8 per-channel weights on each Conv/Gemm/MatMul whose input is dequantized."""
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        model = onnx.version_converter.convert_version(model, 13)  # per-axis DequantizeLinear
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inputs = {i.name for i in g.input}
    nodes, dequantized = [], {}

    def qdq(name: str, p: QParams, source: str) -> list:
        scale = numpy_helper.from_array(np.array(p.scale, np.float32), f"{name}_scale")
        zp = numpy_helper.from_array(np.array(p.zero_point, np.int8), f"{name}_zero_point")
        g.initializer.extend([scale, zp])
        dq = name if name not in inputs else f"{name}_dequantized"
        dequantized[name] = dq
        return [
            helper.make_node(
                "QuantizeLinear", [source, scale.name, zp.name], [f"{name}_quantized"]
            ),
            helper.make_node("DequantizeLinear", [f"{name}_quantized", scale.name, zp.name], [dq]),
        ]

    for name in inputs & set(params):
        nodes += qdq(name, params[name], name)
    for node in g.node:
        for k, i in enumerate(node.input):
            if i in inputs and i in dequantized:
                node.input[k] = dequantized[i]
        new_outputs = []
        for k, o in enumerate(node.output):
            if o in params:  # the producer writes o_float; the DequantizeLinear writes o
                node.output[k] = f"{o}_float"
                new_outputs += qdq(o, params[o], node.output[k])
        nodes += [node] + new_outputs
    _quantize_weights(g, nodes, set(dequantized.values()), scheme)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


def _quantize_weights(g, nodes, dequantized: set, scheme):
    inits = {t.name: t for t in g.initializer}
    extra = []
    for node in nodes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            axis = 0
        elif node.op_type == "Gemm" and not attrs.get("transA", 0):
            axis = 0 if attrs.get("transB", 0) else 1
        elif node.op_type == "MatMul":
            axis = 1
        else:
            continue
        if len(node.input) < 2 or node.input[0] not in dequantized or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        if node.op_type != "Conv" and w.ndim != 2:
            continue
        qw, sw = scheme.weights(w.astype(np.float64), axis)
        base = f"{node.name or node.output[0]}_{node.input[1]}"
        q = numpy_helper.from_array(qw, f"{base}_quantized")
        s = numpy_helper.from_array(sw.astype(np.float32), f"{base}_scale")
        z = numpy_helper.from_array(np.zeros(sw.shape, np.int8), f"{base}_zero_point")
        g.initializer.extend([q, s, z])
        extra.append(
            (
                node,
                helper.make_node(
                    "DequantizeLinear", [q.name, s.name, z.name], [f"{base}_dequantized"], axis=axis
                ),
            )
        )
        node.input[1] = f"{base}_dequantized"
    for node, dq in extra:
        nodes.insert(nodes.index(node), dq)


def save(result: ExportResult, path) -> None:
    """Write the QDQ model whole (a temporary file beside ``path``, renamed when complete)."""
    with atomic_path(path) as tmp:
        onnx.save(result.model, str(tmp))
