"""ONNX in and out of quantization-aware fine-tuning.

In: :func:`prepare` imports, canonicalizes and calibrates the float ONNX model exactly as
``tvm-intq compile`` does, so the :class:`~tvm_intq.qat.model.QatModel` starts as the very
program post-training quantization compiles.

Out: :func:`export` writes the fine-tuned weights and biases (pow2: the held INT-SE bias)
into the ONNX model with BatchNormalization folded into the Conv before it
(:func:`fold_batch_norm`), and adds QuantizeLinear/DequantizeLinear with the calibrated scales
and per-channel int8 weights (:func:`tvm_intq.export_qdq.write_qdq`, the scheme's own
``Qw, sw``). ``tvm-intq compile`` imports it as a pre-quantized model, without calibration,
and folds the same integer program the QAT forward pass computes. The BatchNorm must go: on
the import side a BatchNormalization between a quantized Conv and its QuantizeLinear has no
integer form (its affine would have to change the int8 weights). Which ONNX tensor holds
which tensor of ours is found by value (:func:`~tvm_intq.export_qdq.match_tensors`) on the
model as it came, before training: training changes values, not the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .. import api
from ..calibration import SampleSet
from ..errors import IntqError
from ..export_qdq import MATCH_SAMPLES, match_tensors, quantized_tensors, write_qdq
from ..frontend import import_onnx, load_onnx
from ..relay_passes.ir_utils import const_value
from ..schemes import Scheme
from .model import QatModel
from .strategies import Strategy


@dataclass
class Origin:
    """What :func:`export` needs to write a QatModel back as ONNX."""

    model: onnx.ModelProto  # the float ONNX model, BatchNorm folded
    samples: SampleSet  # a few calibration samples, to find our tensors in it by value
    batch_size: int


def fold_batch_norm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each ``BatchNormalization(Conv(x, W, b))`` whose Conv output feeds only it becomes
    ``Conv(x, W', b')`` with ``k = gamma / sqrt(var + eps)``, ``W' = W k`` (per output
    channel) and ``b' = (b - mean) k + beta``, in float64, stored as float32."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    readers: dict = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    outputs = {o.name for o in g.output}
    folded = []
    for bn in g.node:
        conv = producers.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or readers[bn.input[0]] != 1 \
                or bn.input[0] in outputs or len([o for o in bn.output if o]) != 1 \
                or not all(i in inits for i in list(bn.input[1:5]) + [conv.input[1]]) \
                or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(inits[i]).astype(np.float64)
                                  for i in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) \
            if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
        base = bn.output[0]
        g.initializer.extend([
            numpy_helper.from_array((w * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32),
                                    f"{base}_folded_weight"),
            numpy_helper.from_array(((b - mean) * k + beta).astype(np.float32), f"{base}_folded_bias")])
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[1], conv.input[2] = f"{base}_folded_weight", f"{base}_folded_bias"
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        g.node.remove(bn)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model


def prepare(model_path, calib: SampleSet, scheme: str | Scheme = "hybrid-asym",
            calibrator: str = api.DEFAULT_CALIBRATOR, strategy: Strategy | None = None,
            input_shapes: dict | None = None, progress: bool = False,
            **calibrator_options) -> QatModel:
    """The float ONNX model at ``model_path``, calibrated on ``calib`` as ``tvm-intq
    compile`` would, as a :class:`QatModel` ready to fine-tune."""
    mod, info = import_onnx(model_path, input_shapes)
    prepared = api.prepare(mod)
    ranges = api.calibrate(prepared, calib, calibrator, scheme, progress, **calibrator_options)
    model = QatModel(prepared, ranges, scheme, strategy)
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
    layers = [n for n in out.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
              and len(n.input) > 1 and n.input[1] in inits]
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
                raise IntqError(f"QAT export: the bias of '{var.name}' is not the bias input of "
                                f"ONNX node '{node.name or node.output[0]}'")
            _write(inits[node.input[2]], np.asarray(held, np.float32))
    return out


def _node_of(original: np.ndarray, layers, inits, what: str):
    tol = 1e-5 * max(float(np.max(np.abs(original))), 1e-12)
    hits = []
    for node in layers:
        v = numpy_helper.to_array(inits[node.input[1]])
        for transposed, cand in ((False, v), (True, v.T if v.ndim == 2 else None)):
            if cand is not None and cand.shape == original.shape \
                    and float(np.max(np.abs(cand - original))) <= tol:
                hits.append((node, transposed))
    if len(hits) != 1:
        raise IntqError(f"QAT export: {'no' if not hits else 'more than one'} ONNX Conv/Gemm/MatMul "
                        f"holds the weight of '{what}'")
    return hits[0]


def _write(init: onnx.TensorProto, value: np.ndarray) -> None:
    shape = numpy_helper.to_array(init).shape
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value, np.float32).reshape(shape),
                                          init.name))


def export(model: QatModel, path) -> onnx.ModelProto:
    """Write the fine-tuned ``model`` as a QDQ ONNX model at ``path`` (see module docstring)
    and return it. The model is exported fully quantized, as its strategy is at the end."""
    origin = model.origin
    # Matched before training's changes: the canonical module and the ONNX model as they came.
    params = quantized_tensors(model.prepared, model.ranges, model.scheme)
    tensors, unmatched = match_tensors(origin.model, model.prepared, list(params), origin.samples,
                                       origin.batch_size)
    if unmatched:
        raise IntqError(f"QAT export: no ONNX tensor holds {', '.join(unmatched)}, so the QDQ "
                        "model would not compute the fine-tuned program")
    qdq = write_qdq(trained_onnx(model), {tensors[n]: params[n] for n in tensors}, model.scheme)
    try:
        onnx.save(qdq, str(path))
    except OSError as err:
        raise IntqError(f"{path}: cannot write the QDQ model ({err.strerror})") from None
    return qdq
