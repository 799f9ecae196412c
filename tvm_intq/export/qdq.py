"""Our calibrated quantization written back into the ONNX model as a standard QDQ model,
which ``tvm-intq compile`` builds back into the same integer program, bit for bit.

For every tensor our integer program stores as int8 (each quantization point, and the output
of each data-movement op, which keeps its input's parameters) with parameters ``(s, zp)``,
and every conv/dense of the program::

    T                      ->  DequantizeLinear(QuantizeLinear(T, s, zp), s, zp)   (int8)
    Conv(x, W) [-> BatchNormalization | Add/Sub/Mul/Div by constants]*
                           ->  Conv(x, DequantizeLinear(Qw, sw, 0, axis), b)

with ``Qw, sw, b`` the constants of our QDQ form (:class:`~tvm_intq.relay_passes.Annotate`'s
output, the module ``compile`` folds into integers): weights quantized by the scheme after
BatchNorm and per-channel affines were folded into them, the folded float bias (the held
bias of pow2). The affine ops are removed, as in our program; biases stay float (our program
folds them into ``ADD``), scales are the float32 values our program uses. The import of such
a model (:mod:`tvm_intq.frontends.prequantized`) then meets exactly the QDQ module ``compile``
built, and ONNX Runtime, or any QDQ consumer, computes what our integer program computes up
to its own rounding.

Our tensors are named after the canonical Relax module (``conv2d_0``, ``add_3``); the
frontend keeps no ONNX names, and canonicalization merges ops (BatchNorm into the conv), so the
names are matched by value: both the canonical module (in TVM) and the ONNX model (in ONNX
Runtime, every tensor exposed) run on a few calibration samples, and each of our tensors maps
to the ONNX tensor of the same shape whose values agree best, within 1e-3 of its largest
magnitude (the first in graph order of equally close ones: a LayerNorm's mean, not the mean
plus its epsilon; an affine's output, not its product before a small bias), or past it to
the last of a chain of single ops that changed not one bit of it on these samples (a clip
that clipped nothing belongs to the layer whose output is ours) and that no other tensor of
ours took first. A conv/dense of ours (its value with bias) is matched the same way along
the ONNX layer's chain of affine ops. This is exact for whatever is computed the same way; a
tensor or layer of ours with no ONNX counterpart (e.g. the partial sum of a variadic ONNX
``Sum``) is reported and left unquantized.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.steps import calibrate, prepare, run_exposed
from tvm_intq.core.config import QuantConfig, parse_float_layers
from tvm_intq.core.intmath import QParams
from tvm_intq.core.schemes import get_scheme
from tvm_intq.errors import IntqError
from tvm_intq.files import atomic_path
from tvm_intq.frontends import import_model
from tvm_intq.frontends.onnx import load_onnx
from tvm_intq.relay_passes import Annotate, analyze
from tvm_intq.relay_passes.analysis.ir_utils import const_value, linear_layer_axes, op_name
from tvm_intq.relay_passes.analysis.quant_points import tensor_args
from tvm_intq.relay_passes.analysis.rebuild import bindings_of

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
    """Calibrate the float ONNX model on ``calib`` and write our parameters into it as QDQ:
    the integer program ``compile`` builds from the same samples and config (module
    docstring), which ``compile`` of the exported model builds again, bit for bit."""
    config = config or QuantConfig()
    if config.scheme == "auto" or parse_float_layers(config.float_layers):
        raise IntqError(
            "export-qdq writes one scheme and every layer quantized: --scheme auto and "
            "--float-layers are for compile/eval"
        )
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
    annotated = Annotate(ranges, config.scheme)(prepared)
    model = _opset_13(load_onnx(model_path))
    scheme = get_scheme(config.scheme)
    params = quantized_tensors(prepared, ranges, scheme)
    layers = integer_layers(prepared, annotated)
    subset = SampleSet({k: v[:MATCH_SAMPLES] for k, v in calib.arrays.items()})
    tensors, unmatched, matched_layers = match_tensors(
        model, prepared, list(params), subset, info.batch_size, layers
    )
    unmatched += [f"{lay.anchor} (weights)" for lay in layers if lay.anchor not in matched_layers]
    model = write_layers(model, matched_layers, {lay.anchor: lay for lay in layers})
    qdq = write_qdq(model, {tensors[n]: params[n] for n in tensors}, scheme)
    return ExportResult(qdq, prepared, ranges, tensors, unmatched)


@dataclass
class Layer:
    """A conv/dense of the integer program as the annotated module holds it: int8 weights
    ``qw`` (Relax layout: OIHW, IOHW for a transposed conv, ``[K, N]`` for a dense) with their
    float32 scales ``sw`` along ``w_axis``, and the float bias it adds (per output channel,
    None without one) to give the tensor ``output``."""

    anchor: str
    output: str
    qw: np.ndarray
    sw: np.ndarray
    w_axis: int
    bias: np.ndarray | None


def integer_layers(prepared, annotated) -> list[Layer]:
    """Every quantized conv/dense of ``annotated`` (:class:`~tvm_intq.relay_passes.Annotate`'s
    output for ``prepared``: the QDQ form ``compile`` folds into integers), with the constants
    it holds: weights as the scheme quantized them after BatchNorm folding, and the bias (the
    scheme's held bias for pow2)."""
    plan = analyze(prepared["main"])
    defs = {b.var: b.value for b in bindings_of(annotated["main"])}
    by_name = {v.name: value for v, value in defs.items()}
    layers = []
    for var, node in plan.nodes.items():
        if node.role != "anchor" or linear_layer_axes(node.call) is None:
            continue
        call = by_name.get(var.name)
        w = call.args[1] if call is not None else None
        w = defs.get(w, w) if isinstance(w, relax.Var) else w
        if op_name(w) != "relax.dequantize" or const_value(w.args[0]) is None:
            continue  # kept float
        qw, sw = const_value(w.args[0]), const_value(w.args[1])
        out, bias = var.name, None
        for ep, n in plan.nodes.items():
            if (
                n.role == "epilogue"
                and op_name(n.call) in ("relax.add", "relax.subtract")
                and n.call.args[0].same_as(var)
                and const_value(n.call.args[1]) is not None
            ):
                b = const_value(by_name[ep.name].args[1]).astype(np.float32).reshape(-1)
                channels = qw.shape[int(w.attrs.axis)]
                b = np.broadcast_to(b, (channels,)) if b.size == 1 else b
                out = ep.name
                bias = -b if op_name(n.call) == "relax.subtract" else b
                break
        layers.append(Layer(var.name, out, qw, sw, int(w.attrs.axis), bias))
    return layers


def match_tensors(
    model: onnx.ModelProto,
    prepared,
    names: list,
    samples: SampleSet,
    batch: int,
    layers: list | None = None,
):
    """``({our tensor: ONNX tensor}, [our tensors without a counterpart], {layer anchor:
    (ONNX layer node index, indices of the affine nodes folded into it, ONNX tensor)})``
    (module docstring). A layer of
    ours (its value with bias, BatchNorm folded) matches a tensor along an ONNX Conv/Gemm/
    MatMul's chain of per-channel affine ops (BatchNormalization, Add/Sub/Mul/Div by a
    constant), each read by the next alone."""
    import onnxruntime as ort

    layers = layers or []
    _, ours = run_exposed(prepared, names + [lay.output for lay in layers], samples, batch)
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

    def closest(a, candidates):
        a = a.astype(np.float64)
        tol = MATCH_TOLERANCE * max(float(np.max(np.abs(a))), 1e-6)
        diffs = [
            (float(np.max(np.abs(theirs[n] - a))), k)
            for k, n in enumerate(candidates)
            if n in theirs and theirs[n].shape == a.shape
        ]
        best = min(diffs, default=(np.inf, -1))  # the closest, the first of equals
        return None if best[0] > tol else candidates[best[1]]

    tensors, unmatched = {}, []
    for name in names:
        match = closest(ours[name], order)
        if match is None:
            unmatched.append(name)
        else:
            tensors[name] = match
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
    ends = {
        t: (k, folded) for k, chain in _layer_chains(model, readers).items() for t, folded in chain
    }
    matched, used = {}, set()
    for lay in layers:
        t = closest(ours[lay.output], [t for t in ends if ends[t][0] not in used])
        if t is not None:
            matched[lay.anchor] = (*ends[t], t)
            used.add(ends[t][0])
    return tensors, unmatched, matched


AFFINE = {"BatchNormalization", "Add", "Sub", "Mul", "Div"}
LAYER_WEIGHT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def _layer_chains(model: onnx.ModelProto, readers: dict) -> dict:
    """``{index of a Conv/ConvTranspose/Gemm/MatMul node with a constant weight: [(its output,
    ()), then (the output of each per-channel affine op after it that alone reads the one
    before, the indices of the affine nodes up to it)]}``."""
    consts = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    index = {id(n): k for k, n in enumerate(model.graph.node)}
    chains = {}
    for k, node in enumerate(model.graph.node):
        if node.op_type not in LAYER_WEIGHT or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if node.op_type == "Gemm" and any(
            a.name == "transA" and helper.get_attribute_value(a) for a in node.attribute
        ):
            continue
        chain = [(node.output[0], ())]
        while len(readers.get(chain[-1][0], [])) == 1:
            nxt = readers[chain[-1][0]][0]
            others = [i for i in nxt.input if i and i != chain[-1][0]]
            if nxt.op_type not in AFFINE or not others or not all(i in consts for i in others):
                break
            chain.append((nxt.output[0], (*chain[-1][1], index[id(nxt)])))
        chains[k] = chain
    return chains


def write_layers(model: onnx.ModelProto, matched: dict, layers: dict) -> onnx.ModelProto:
    """Each matched ONNX layer computes what ours computes: ``DequantizeLinear`` of our int8
    weights (per output channel) and our float bias, writing the end of its matched chain
    directly (the BatchNorm or affine ops folded into it are removed)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    nodes = list(g.node)
    replaced, folded = {}, set()
    for anchor, (k, chain, tensor) in matched.items():
        replaced[k] = _layer_nodes(g, nodes[k], layers[anchor], tensor)
        folded.update(chain)
    out = []
    for k, node in enumerate(nodes):
        if k in replaced:
            out += replaced[k]
        elif k not in folded:
            out.append(node)
    del g.node[:]
    g.node.extend(out)
    return model


def _layer_nodes(g, node, lay: Layer, tensor: str) -> list:
    """The nodes replacing the ONNX layer ``node``: its weight dequantized from our int8
    weights, our bias, and ``tensor`` as output."""
    base = f"{node.name or node.output[0]}_{node.input[1]}"
    qw, axis = lay.qw, lay.w_axis
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and attrs.get("transB", 0):
        qw, axis = qw.T, 1 - axis  # ONNX holds B as [N, K]
    q = numpy_helper.from_array(np.ascontiguousarray(qw).astype(np.int8), f"{base}_quantized")
    s = numpy_helper.from_array(lay.sw.astype(np.float32).reshape(-1), f"{base}_scale")
    z = numpy_helper.from_array(np.zeros(lay.sw.size, np.int8), f"{base}_zero_point")
    g.initializer.extend([q, s, z])
    dq = helper.make_node(
        "DequantizeLinear", [q.name, s.name, z.name], [f"{base}_dequantized"], axis=axis
    )
    layer = onnx.NodeProto()
    layer.CopyFrom(node)
    del layer.input[1:]
    layer.input.append(dq.output[0])
    if node.op_type == "Gemm":  # alpha and beta are in our weights and bias
        keep = [a for a in layer.attribute if a.name not in ("alpha", "beta")]
        del layer.attribute[:]
        layer.attribute.extend(keep)
    nodes = [dq, layer]
    if lay.bias is not None:
        b = numpy_helper.from_array(lay.bias.astype(np.float32), f"{base}_bias")
        g.initializer.append(b)
        if node.op_type == "MatMul":
            layer.output[0] = f"{tensor}_unbiased"
            nodes.append(helper.make_node("Add", [layer.output[0], b.name], [tensor]))
            return nodes
        layer.input.append(b.name)
    layer.output[0] = tensor
    return nodes


def write_qdq(model: onnx.ModelProto, params: dict, scheme) -> onnx.ModelProto:
    """QuantizeLinear + DequantizeLinear on each ONNX tensor in ``params`` ({name: QParams}),
    int8 per-channel weights (the scheme's, from the float weight) on each Conv/Gemm/MatMul whose
    input is dequantized and whose weight is still float (:func:`write_layers` wrote the others;
    QAT export writes its fine-tuned weights this way)."""
    model = onnx.ModelProto.FromString(_opset_13(model).SerializeToString())
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


def _opset_13(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset 13 at least (per-axis DequantizeLinear)."""
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        return onnx.version_converter.convert_version(model, 13)
    return model


def save(result: ExportResult, path) -> None:
    """Write the QDQ model whole (a temporary file beside ``path``, renamed when complete)."""
    with atomic_path(path) as tmp:
        onnx.save(result.model, str(tmp))
