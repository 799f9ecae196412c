"""The table's rows: a float ONNX model, its calibration and evaluation inputs, and its metric.

:func:`load_task` is all another tool needs to work on one of these models without torch or
TVM (the QAT work reads the model where PTQ loses the most through it)::

    from eval.tasks import load_task
    task = load_task("rec")
    task.model                  # prepared float ONNX (fixed shape, initializers, BN folded)
    task.calib["x"], task.eval["x"]  # float32 NCHW inputs, samples on axis 0 (disjoint sets)
    task.score(outputs)         # {metric: value} from the model's first output on task.eval

    from eval.tasks import hardest_task, ptq_gaps
    ptq_gaps("percentile")      # {model: points lost, output SQNR} of a column (results.json)
    hardest_task()              # the OCR model where PTQ loses the most, loaded as above

Data (rendered deterministically, :mod:`eval.ocr_data`; calibration seed 0, evaluation
seed 1): see :data:`SIZES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from . import ocr_data, ocr_models

# (calibration samples, evaluation samples) per task; the bundled model uses its own files.
SIZES = {"det": (24, 40), "rec": (64, 200), "cls": (128, 256)}
CALIB_SEED, EVAL_SEED = 0, 1


@dataclass
class Task:
    """One row of the table (module docstring)."""

    key: str
    model: Path
    calib: dict  # {input name: float32 array}, samples on axis 0
    eval: dict
    score: Callable[[np.ndarray], dict]  # first model output on ``eval`` -> {metric: value}
    metric: str  # the headline key of ``score``'s result (higher is better, in %)
    data: dict = field(default_factory=dict)  # what the sets are, for the report


def load_task(key: str, sizes: tuple[int, int] | None = None) -> Task:
    """The task ``key`` (``bundled``, ``det``, ``rec``, ``cls``) with ``sizes`` =
    ``(calibration, evaluation)`` sample counts (default :data:`SIZES`)."""
    if key == "bundled":
        return _bundled(sizes)
    n_cal, n_ev = sizes or SIZES[key]
    return {"det": _det, "rec": _rec, "cls": _cls}[key](n_cal, n_ev)


def _bundled(sizes) -> Task:
    from tvm_intq.demo import MODEL, bundled

    calib = np.load(bundled("calib.npz"))["input"]
    held = np.load(bundled("heldout.npz"))
    x, labels = held["input"], held["labels"]
    if sizes:
        calib, x, labels = calib[: sizes[0]], x[: sizes[1]], labels[: sizes[1]]

    def score(out):
        return {"top1": 100.0 * float(np.mean(out.reshape(len(labels), -1).argmax(1) == labels))}

    model = ocr_models.CACHE / "mnist_cnn.pre.onnx"  # same ORT pre-processing as the OCR models
    if not model.exists():
        ocr_models.ort_preprocess(onnx.load(str(bundled(MODEL))), model)
    return Task(
        "bundled",
        model,
        {"input": calib},
        {"input": x},
        score,
        "top1",
        {
            "calib": f"{len(calib)} MNIST digits (calib.npz)",
            "eval": f"{len(x)} held-out MNIST digits (heldout.npz)",
        },
    )


def _det(n_cal, n_ev) -> Task:
    cal_pages, _ = ocr_data.render_pages(n_cal, CALIB_SEED)
    cal_pages += ocr_data.scanned_pages()
    pages, truth = ocr_data.render_pages(n_ev, EVAL_SEED)

    def score(out):
        preds = [ocr_models.det_boxes(o[None], p.shape[:2]) for o, p in zip(out, pages)]
        return {k: 100.0 * v for k, v in ocr_models.precision_recall(preds, truth).items()}

    return Task(
        "det",
        ocr_models.prepare("det"),
        {"x": np.stack([ocr_models.det_input(p) for p in cal_pages])},
        {"x": np.stack([ocr_models.det_input(p) for p in pages])},
        score,
        "f1",
        {
            "calib": f"{n_cal} rendered pages + skimage page and text",
            "eval": f"{n_ev} rendered pages, {sum(len(t) for t in truth)} text lines",
        },
    )


def _rec(n_cal, n_ev) -> Task:
    cal_lines, _ = ocr_data.render_lines(n_cal, CALIB_SEED)
    lines, texts = ocr_data.render_lines(n_ev, EVAL_SEED)

    def score(out):
        preds = ocr_models.rec_texts(out)
        return {
            "char_acc": 100.0 * ocr_models.char_accuracy(preds, texts),
            "line_acc": 100.0 * float(np.mean([p == t for p, t in zip(preds, texts)])),
        }

    x = np.stack([ocr_models.rec_input(line) for line in lines])
    return Task(
        "rec",
        ocr_models.prepare("rec"),
        {"x": np.stack([ocr_models.rec_input(line) for line in cal_lines])},
        {"x": x},
        score,
        "char_acc",
        {
            "calib": f"{n_cal} rendered lines",
            "eval": f"{n_ev} rendered lines, {sum(len(t) for t in texts)} characters",
        },
    )


def _cls(n_cal, n_ev) -> Task:
    def oriented(n, seed):
        # Every other line turned 180 degrees: label 1 (rapidocr's label_list ['0', '180']).
        lines, _ = ocr_data.render_lines(n, seed)
        labels = np.arange(n) % 2
        images = [ocr_data.rotate180(im) if y else im for im, y in zip(lines, labels)]
        return np.stack([ocr_models.cls_input(im) for im in images]), labels

    cal, _ = oriented(n_cal, CALIB_SEED)
    x, labels = oriented(n_ev, EVAL_SEED)

    def score(out):
        return {"top1": 100.0 * float(np.mean(out.reshape(len(labels), -1).argmax(1) == labels))}

    return Task(
        "cls",
        ocr_models.prepare("cls"),
        {"x": cal},
        {"x": x},
        score,
        "top1",
        {
            "calib": f"{n_cal} rendered lines, half turned 180 degrees",
            "eval": f"{n_ev} rendered lines, half turned 180 degrees",
        },
    )


def ptq_gaps(column: str = "percentile", results: Path | None = None) -> dict:
    """``{model: {"points_lost": float metric - column's, "sqnr_db": column's output SQNR}}``
    from ``eval/results/results.json`` (``column``: a table column, e.g. ``ort-minmax``)."""
    import json

    results = results or Path(__file__).parent / "results" / "results.json"
    out = {}
    for row in json.loads(results.read_text())["rows"]:
        cols, m = row["columns"], row["metric"]
        if column in cols:
            out[row["model"]] = {
                "points_lost": cols["float"][m] - cols[column][m],
                "sqnr_db": cols[column]["sqnr_db"],
            }
    return out


def hardest_task(column: str = "percentile", results: Path | None = None) -> Task:
    """The real (OCR) model where PTQ with ``column`` loses the most, loaded: the most points
    of its task metric lost, ties (on these models the good configurations lose nothing
    measurable on the metric) broken by the lowest output SQNR: more than half a point lost
    ranks first, then the lowest SQNR."""
    gaps = {k: v for k, v in ptq_gaps(column, results).items() if k != "bundled"}
    return load_task(max(gaps, key=lambda k: (gaps[k]["points_lost"] > 0.5, -gaps[k]["sqnr_db"])))
