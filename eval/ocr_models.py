"""The PP-OCRv4 models the ``rapidocr-onnxruntime`` wheel ships, made quantizable, and their
task metrics.

The wheel's PaddlePaddle exports cannot go to a quantizer as they are: weights are ``Constant``
nodes (ONNX Runtime's quantizer only quantizes initializers), every input dimension is dynamic,
BatchNormalization follows the convs and the opset is 11/12 (per-channel QDQ needs >= 13).
:func:`prepare` fixes all four in one place so that tvm-intq and ONNX Runtime's
``quantize_static`` read the very same float graph:

1. the input shape is fixed (batch 1, the spatial size of :data:`MODELS`);
2. ``Constant`` nodes become initializers;
3. the opset is raised to 13 (``onnx.version_converter``);
4. ONNX Runtime's ``quant_pre_process`` runs symbolic shape inference and its basic graph
   optimizations: constant folding (the Shape/Slice/Concat chains of the dynamic-shape export
   become constants once the shape is fixed) and Conv+BatchNormalization fusion.

Pre- and post-processing are rapidocr's own (its resize/normalize, DB post-processing, CTC
decoding with the character list stored in the rec model's metadata); the metrics are here.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

CACHE = Path.home() / ".cache" / "tvm-intq" / "ocr"


@dataclass(frozen=True)
class OcrModel:
    """One model of the wheel: its file and the input shape we fix (chosen for a 2-core host)."""

    key: str
    file: str
    shape: tuple  # (1, 3, H, W)


# rec and cls keep the shapes rapidocr feeds them (rec_img_shape, cls_image_shape); det runs
# at 320x320 (rapidocr resizes to a multiple of 32, 736 on the short side by default): our
# rendered pages are that size, so nothing is resized away.
MODELS = {
    "det": OcrModel("det", "ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320)),
    "rec": OcrModel("rec", "ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    "cls": OcrModel("cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
}


def wheel_model(key: str) -> Path:
    """Path of the original model inside the installed rapidocr package."""
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models" / MODELS[key].file


def prepare(key: str, cache: Path = CACHE, shape: tuple | None = None) -> Path:
    """Path of the prepared float model (module docstring), made once and cached; ``shape``
    fixes another input shape than :data:`MODELS`' (bench/run.py: det at 640x640 on the host,
    smaller inputs where every instruction is counted under an emulator)."""
    shape = tuple(shape or MODELS[key].shape)
    out = cache / f"{key}_{'x'.join(map(str, shape))}.onnx"
    if out.exists():
        return out
    model = onnx.load(str(wheel_model(key)))
    _fix_input_shape(model, shape)
    _constants_to_initializers(model)
    return ort_preprocess(version_converter.convert_version(model, 13), out)


def ort_preprocess(model: onnx.ModelProto, out: Path) -> Path:
    """``model`` through ONNX Runtime's ``quant_pre_process`` (shape inference, constant
    folding, Conv+BatchNormalization fusion: what ORT recommends before ``quantize_static``),
    written to ``out``. ORT's symbolic shape inference fails on these exports (a Concat it
    does not expect), ONNX's own shape inference is enough once the input shape is fixed."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        onnx.save(model, str(raw))
        part = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(raw), str(part), skip_symbolic_shape=True)
        onnx.checker.check_model(str(part))
        part.replace(out)
    return out


def _fix_input_shape(model: onnx.ModelProto, shape: tuple):
    (inp,) = model.graph.input
    for dim, value in zip(inp.type.tensor_type.shape.dim, shape):
        dim.Clear()
        dim.dim_value = value
    # The export's intermediate shapes name dynamic dims: inferred again from the fixed input.
    del model.graph.value_info[:]


def _constants_to_initializers(model: onnx.ModelProto):
    """``Constant(value=t) -> y`` becomes initializer ``y`` (ORT quantizes initializers only)."""
    keep = []
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and "value" in attrs:
            t = numpy_helper.to_array(attrs["value"].t)
            model.graph.initializer.append(numpy_helper.from_array(t, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


# ---------------------------------------------------------------------------------------------
# rapidocr's pre- and post-processing
# ---------------------------------------------------------------------------------------------
def det_input(image: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 page (H, W multiples of 32) as det's normalized NCHW input (rapidocr's
    DetPreProcess; the resize is a no-op at the model's own size)."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DetPreProcess

    h, w = MODELS["det"].shape[2:]
    pre = DetPreProcess(limit_side_len=min(h, w), limit_type="min")
    x = pre(image)
    assert x.shape[2:] == (h, w), f"det input {x.shape}: render pages at {h}x{w}"
    return x[0]


def det_boxes(prob_map: np.ndarray, image_hw: tuple) -> np.ndarray:
    """Boxes ``[n, 4, 2]`` from det's probability map ``[1, 1, H, W]`` with rapidocr's
    DBPostProcess and its defaults (config.yaml)."""
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

    post = DBPostProcess(
        thresh=0.3,
        box_thresh=0.5,
        max_candidates=1000,
        unclip_ratio=1.6,
        score_mode="fast",
        use_dilation=True,
    )
    boxes, _ = post(prob_map[None] if prob_map.ndim == 3 else prob_map, image_hw)
    return np.asarray(boxes, np.float32).reshape(-1, 4, 2)


def rec_input(line: np.ndarray) -> np.ndarray:
    """A text line (HxWx3 uint8) as rec's input ``[3, 48, 320]`` (rapidocr's resize_norm_img)."""
    from rapidocr_onnxruntime.ch_ppocr_rec.text_recognize import TextRecognizer

    _, h, w = MODELS["rec"].shape[1:]
    this = SimpleNamespace(rec_image_shape=[3, h, w])
    return TextRecognizer.resize_norm_img(this, line, w / h)


def cls_input(line: np.ndarray) -> np.ndarray:
    """A text line as cls's input ``[3, 48, 192]`` (rapidocr's resize_norm_img)."""
    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

    this = SimpleNamespace(cls_image_shape=list(MODELS["cls"].shape[1:]))
    return TextClassifier.resize_norm_img(this, line)


@functools.cache
def _ctc_decoder():
    from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

    meta = {
        p.key: p.value
        for p in onnx.load(str(wheel_model("rec")), load_external_data=False).metadata_props
    }
    return CTCLabelDecode(character=meta["character"].splitlines())


def rec_texts(probs: np.ndarray) -> list[str]:
    """Texts from rec's output ``[n, T, classes]`` (rapidocr's CTCLabelDecode, its dictionary)."""
    return [text for text, _ in _ctc_decoder()(probs)]


def rec_charset() -> set[str]:
    """Characters rec can output (its dictionary and the space)."""
    return set(_ctc_decoder().character[1:])


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(preds: list[str], truths: list[str]) -> float:
    """Character accuracy ``1 - sum(edit distance) / sum(len(truth))`` over the whole set (the
    ICDAR "1 - normalized edit distance" pooled over characters, so long lines weigh more);
    at least 0."""
    errors = sum(edit_distance(p, t) for p, t in zip(preds, truths, strict=True))
    return max(0.0, 1.0 - errors / max(1, sum(len(t) for t in truths)))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two quadrilaterals ``[4, 2]`` (shapely polygons; rapidocr depends on shapely)."""
    from shapely.geometry import Polygon

    pa, pb = Polygon(a).buffer(0), Polygon(b).buffer(0)
    union = pa.union(pb).area
    return 0.0 if union <= 0 else pa.intersection(pb).area / union


def match_boxes(preds: list, truths: list, iou: float = 0.5) -> tuple[int, int, int]:
    """``(true positives, predicted, ground truth)`` summed over images; each ground-truth box
    matches at most one prediction (greedy by IoU, ICDAR-style one-to-one at ``iou``)."""
    tp = n_pred = n_true = 0
    for p_boxes, t_boxes in zip(preds, truths, strict=True):
        n_pred += len(p_boxes)
        n_true += len(t_boxes)
        pairs = sorted(
            ((box_iou(p, t), i, j) for i, p in enumerate(p_boxes) for j, t in enumerate(t_boxes)),
            reverse=True,
        )
        used_p, used_t = set(), set()
        for score, i, j in pairs:
            if score < iou:
                break
            if i not in used_p and j not in used_t:
                used_p.add(i)
                used_t.add(j)
                tp += 1
    return tp, n_pred, n_true


def precision_recall(preds: list, truths: list, iou: float = 0.5) -> dict:
    """Detection precision, recall and F1 (hmean) at IoU ``iou``."""
    tp, n_pred, n_true = match_boxes(preds, truths, iou)
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
