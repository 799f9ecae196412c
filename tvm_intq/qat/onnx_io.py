"""ONNX in and out of quantization-aware fine-tuning.

In: :func:`prepare` imports, canonicalizes and calibrates the float ONNX model exactly as
``tvm-intq compile`` does, so the :class:`~tvm_intq.qat.model.QatModel` starts as the very
program post-training quantization compiles.

Out: :func:`export` writes the fine-tuned weights and biases (pow2: the held INT-SE bias)
into the ONNX model with BatchNormalization folded into the Conv before it
(:func:`fold_batch_norm`), and adds QuantizeLinear/DequantizeLinear with the calibrated scales
and per-channel int8 weights (:func:`tvm_intq.export.qdq.write_qdq`, the scheme's own
``Qw, sw``). ``tvm-intq compile`` imports it as a pre-quantized model, without calibration,
and folds the same integer program the QAT forward pass computes. The BatchNorm must go: on
the import side a BatchNormalization between a quantized Conv and its QuantizeLinear has no
integer form (its affine would have to change the int8 weights). Which ONNX tensor holds
which tensor of ours is found by value (:func:`~tvm_intq.export.qdq.match_tensors`) on the
model as it came, before training: training changes values, not the graph.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.steps import calibrate, prepare
from tvm_intq.core.config import DEFAULT_CALIBRATOR
from tvm_intq.core.schemes import Scheme
from tvm_intq.errors import IntqError
from tvm_intq.export.qdq import MATCH_SAMPLES, match_tensors, quantized_tensors, write_qdq
from tvm_intq.frontends import import_model
from tvm_intq.frontends.onnx import load_onnx
from tvm_intq.qat.model import QatModel
from tvm_intq.qat.strategies import Strategy
from tvm_intq.relay_passes.analysis.ir_utils import channel_axis_of, const_value


@dataclass
class Origin:
    """What :func:`export` needs to write a QatModel back as ONNX."""

    model: onnx.ModelProto  # the float ONNX model, BatchNorm folded
    samples: SampleSet  # a few calibration samples, to find our tensors in it by value
    batch_size: int


def fold_batch_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold what :class:`~tvm_intq.relay_passes.FoldBatchNorm` folds, so that the ONNX
    model's Convs hold the weights of ours: each ``BatchNormalization`` and each ``Mul``,
    ``Div``, ``Add`` or ``Sub`` by a constant (scalar or per output channel) reading a Conv
    output that feeds only it becomes part of the Conv: BatchNorm with ``k = gamma /
    sqrt(var + eps)``, ``W' = W k``, ``b' = (b - mean) k + beta``; ``* c``: ``W c, b c``;
    ``+ c``: ``b + c``; in float64, stored as float32. Repeats along a chain. A
    ``HardSigmoid`` there gives the Conv its ``alpha x + beta`` and leaves a Clip to [0, 1]
    (the importer decomposes it so, and FoldBatchNorm folds the affine)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    producers = {o: n for n in g.node for o in n.output}
    readers = Counter(i for n in g.node for i in n.input)
    # One pass in graph order: a folded op's output is the Conv's from then on, so the next op
    # of a chain finds the Conv as its producer.
    for node in list(g.node):
        step = _affine_step(node, producers, readers, inits, outputs)
        if step is None:
            continue
        conv, k, shift, clip01 = step
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(w.shape[0])
        )
        base = node.output[0]
        folded = [
            numpy_helper.from_array(
                (w * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32),
                f"{base}_folded_weight",
            ),
            numpy_helper.from_array((b * k + shift).astype(np.float32), f"{base}_folded_bias"),
        ]
        g.initializer.extend(folded)
        inits.update({t.name: t for t in folded})
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[1], conv.input[2] = folded[0].name, folded[1].name
        if clip01:  # HardSigmoid's affine is in the conv now; its clip to [0, 1] stays
            conv.output[0] = f"{base}_folded"
            bounds = _clip_bounds(model, g, base)
            clip = onnx.helper.make_node(
                "Clip",
                [conv.output[0], *bounds["inputs"]],
                [base],
                name=f"{node.name}_clip",
                **bounds["attrs"],
            )
            g.node.insert(list(g.node).index(node), clip)
            producers[conv.output[0]], producers[base] = conv, clip
        else:
            conv.output[0] = base
            producers[base] = conv
        g.node.remove(node)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model


def _affine_step(node, producers, readers, inits, outputs):
    """``(conv, k, shift, clip01)`` when ``node`` computes ``conv * k + shift`` per output
    channel (then clipped to [0, 1] if ``clip01``: HardSigmoid) from a Conv output it alone
    reads (see :func:`fold_batch_norm`), else None."""
    if (
        node.op_type not in ("BatchNormalization", "HardSigmoid", "Mul", "Div", "Add", "Sub")
        or len([o for o in node.output if o]) != 1
    ):
        return None
    data = node.input[0]
    if node.op_type in ("Mul", "Add") and data in inits:  # constant first
        data = node.input[1]
    conv = producers.get(data)
    if (
        conv is None
        or conv.op_type != "Conv"
        or readers.get(data) != 1
        or data in outputs
        or conv.input[1] not in inits
        or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
    ):
        return None
    weight = numpy_helper.to_array(inits[conv.input[1]])
    channels = weight.shape[0]
    if node.op_type == "BatchNormalization":
        if not all(i in inits for i in node.input[1:5]):
            return None
        gamma, beta, mean, var = (
            numpy_helper.to_array(inits[i]).astype(np.float64) for i in node.input[1:5]
        )
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        return conv, k, beta - mean * k, False
    if node.op_type == "HardSigmoid":  # clip(alpha x + beta, 0, 1), as the importer writes it
        attrs = {a.name: a.f for a in node.attribute}
        return (
            conv,
            np.full(channels, attrs.get("alpha", 0.2)),
            np.full(channels, attrs.get("beta", 0.5)),
            True,
        )
    other = [i for i in node.input if i != data]
    if (
        len(other) != 1
        or other[0] not in inits
        or node.input[0] != data
        and node.op_type in ("Sub", "Div")
    ):
        return None
    c = numpy_helper.to_array(inits[other[0]]).astype(np.float64)
    axis = channel_axis_of(c, weight.ndim)  # FoldBatchNorm's rule: a scalar, or along channels
    if axis is False or axis not in (None, 1):
        return None
    c = np.full(channels, float(c.reshape(()))) if axis is None else c.reshape(-1)
    if node.op_type == "Mul":
        return conv, c, np.zeros(channels), False
    if node.op_type == "Div":
        return (conv, 1.0 / c, np.zeros(channels), False) if np.all(c != 0) else None
    return conv, np.ones(channels), c if node.op_type == "Add" else -c, False


def _clip_bounds(model: onnx.ModelProto, g, base: str) -> dict:
    """Clip to [0, 1]: bound inputs from opset 11, attributes before."""
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 11:
        return {"inputs": [], "attrs": {"min": 0.0, "max": 1.0}}
    names = [f"{base}_clip_lo", f"{base}_clip_hi"]
    g.initializer.extend(numpy_helper.from_array(np.float32(v), n) for v, n in zip((0, 1), names))
    return {"inputs": names, "attrs": {}}


#: Model files :func:`prepare_qat` reads that :func:`export` cannot write back into.
NOT_ONNX = (".pt2", ".tflite")


def prepare_qat(
    model_path,
    calib: SampleSet,
    scheme: str | Scheme = "hybrid-asym",
    calibrator: str = DEFAULT_CALIBRATOR,
    strategy: Strategy | None = None,
    input_shapes: dict | None = None,
    progress: bool = False,
    ranges: dict | None = None,
    **calibrator_options,
) -> QatModel:
    """The float model at ``model_path``, calibrated on ``calib`` as ``tvm-intq compile``
    would, as a :class:`QatModel` ready to fine-tune. ``ranges`` (the ``model.ranges`` of an
    earlier prepare_qat of the same model and scheme) skips calibrating again: several
    strategies can start from one calibration. An ONNX model can go back out as ONNX
    (:func:`export`); any model (``.pt2``, ``.tflite`` too) goes on to the compiler as
    :func:`~tvm_intq.qat.to_relax.integer_program`."""
    mod, info = import_model(model_path, input_shapes)
    prepared = prepare(mod)
    if ranges is None:
        ranges = calibrate(prepared, calib, calibrator, scheme, progress, **calibrator_options)
    model = QatModel(prepared, ranges, scheme, strategy)
    if Path(model_path).suffix not in NOT_ONNX:
        subset = SampleSet({k: v[:MATCH_SAMPLES] for k, v in calib.arrays.items()})
        model.origin = Origin(fold_batch_norm(load_onnx(model_path)), subset, info.batch_size)
    return model


def trained_onnx(model: QatModel) -> onnx.ModelProto:
    """The BN-folded ONNX model with the fine-tuned weights and the biases the integer program
    adds. Each conv/dense is the ONNX Conv/Gemm/MatMul whose weight initializer holds (to
    float rounding: BatchNorm was folded twice) the weight the model started from, as is or
    transposed (a Gemm with ``transB``); its bias is that node's bias input."""
    out = onnx.ModelProto.FromString(model.origin.model.SerializeToString())
    inits = {t.name: t for t in out.graph.initializer}
    layers = [
        n
        for n in out.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits
    ]
    taken = set()
    for var, (_, bias_var) in model.layers.items():
        original = const_value(model.defs[var].args[1])
        node, transposed = _node_of(original, layers, inits, var.name)
        if node.name + node.output[0] in taken:
            raise IntqError(f"QAT export: two layers of ours map to ONNX node '{node.name}'")
        taken.add(node.name + node.output[0])
        _, _, held = model.quantized_layer(var)
        w = model.weight[var.name].detach().numpy()
        _write(inits[node.input[1]], w.T if transposed else w)
        if bias_var is not None:
            if len(node.input) < 3 or node.input[2] not in inits:
                raise IntqError(
                    f"QAT export: the bias of '{var.name}' is not the bias input of "
                    f"ONNX node '{node.name or node.output[0]}'"
                )
            _write(inits[node.input[2]], np.asarray(held, np.float32))
    return out


def _node_of(original: np.ndarray, layers, inits, what: str):
    tol = 1e-5 * max(float(np.max(np.abs(original))), 1e-12)
    hits = []
    for node in layers:
        v = numpy_helper.to_array(inits[node.input[1]])
        for transposed, cand in ((False, v), (True, v.T if v.ndim == 2 else None)):
            if (
                cand is not None
                and cand.shape == original.shape
                and float(np.max(np.abs(cand - original))) <= tol
            ):
                hits.append((node, transposed))
    if len(hits) != 1:
        raise IntqError(
            f"QAT export: {'no' if not hits else 'more than one'} ONNX Conv/Gemm/MatMul "
            f"holds the weight of '{what}'"
        )
    return hits[0]


def _write(init: onnx.TensorProto, value: np.ndarray) -> None:
    shape = numpy_helper.to_array(init).shape
    init.CopyFrom(
        numpy_helper.from_array(np.ascontiguousarray(value, np.float32).reshape(shape), init.name)
    )


def export(model: QatModel, path) -> onnx.ModelProto:
    """Write the fine-tuned ``model`` as a QDQ ONNX model at ``path`` (see module docstring)
    and return it. The model is exported fully quantized, as its strategy is at the end."""
    origin = model.origin
    if origin is None:
        raise IntqError(
            "QAT export writes the fine-tuned weights into the model's ONNX file, and this model "
            "came from none; tvm_intq.qat.integer_program(model) hands it to the compiler as is"
        )
    # Matched before training's changes: the canonical module and the ONNX model as they came.
    params = quantized_tensors(model.prepared, model.ranges, model.scheme)
    tensors, unmatched, _ = match_tensors(
        origin.model, model.prepared, list(params), origin.samples, origin.batch_size
    )
    if unmatched:
        raise IntqError(
            f"QAT export: no ONNX tensor holds {', '.join(unmatched)}, so the QDQ "
            "model would not compute the fine-tuned program"
        )
    qdq = write_qdq(trained_onnx(model), {tensors[n]: params[n] for n in tensors}, model.scheme)
    try:
        onnx.save(qdq, str(path))
    except OSError as err:
        raise IntqError(f"{path}: cannot write the QDQ model ({err.strerror})") from None
    return qdq
