"""The accuracy table of issue #7: every quantization method on the bundled model and the
three PP-OCRv4 models of rapidocr, side by side with ONNX Runtime's int8.

    make eval                                   # all models, results in eval/results/
    python -m eval.run --models cls rec         # some rows (others are kept from earlier runs)
    python -m eval.run --columns percentile ort-minmax   # quick columns first
    python -m eval.run --models                 # only rebuild results.* from the rows

Each model's row is written to ``eval/results/rows/<model>.json`` after every column, so an
interrupted run resumes where it stopped (``--redo COLUMN`` recomputes one); ``results.json``,
``results.md`` and ``results.png`` are rebuilt from the rows at the end
(:func:`tvm_intq.reports.accuracy.write_accuracy`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

from tvm_intq.reports.accuracy import accuracy_markdown, write_accuracy
from tvm_intq.reports.files import write_json

from . import methods
from .tasks import load_task

RESULTS = Path(__file__).parent / "results"
MODELS = ("bundled", "cls", "det", "rec")
# Samples the per-layer searches (auto, hybrid precision) run on: the float TVM build of the
# big models is untuned (seconds per sample), and each search runs it once per layer.
SEARCH = {"bundled": 64, "cls": 32, "det": 2, "rec": 1}
# det has no classification view for --max-drop: its hybrid target is output SQNR in dB.
MIN_SQNR = {"det": 20.0}
TVM_COLUMNS = [*methods.CONFIGS, "auto", "hybrid-precision"]
COLUMNS = ["float", *(f"ort-{m.lower()}" for m in methods.ORT_METHODS), *TVM_COLUMNS]
NOTES = [
    "Models: the float ONNX files of rapidocr-onnxruntime 1.4.4 prepared once "
    "(eval/ocr_models.py: input shape fixed, Constant nodes to initializers, opset 13, ONNX "
    "Runtime's quant_pre_process folding constants and Conv+BatchNormalization); both tools "
    "quantize that same file. The bundled model goes through the same quant_pre_process.",
    "Metrics: det = precision/recall/F1 (hmean) of rapidocr's DB post-processing boxes against "
    "the ink boxes of the rendered lines, one-to-one matches at IoU >= 0.5; rec = character "
    "accuracy 1 - sum(edit distance) / sum(truth length) over the set after rapidocr's CTC "
    "decoding (line_acc: exact lines); cls = top-1 over upright and 180-degree-turned lines.",
    "Calibration and evaluation sets are disjoint (rendered with seeds 0 and 1). auto and "
    "hybrid-precision search on the first calibration samples (see SEARCH in eval/run.py), "
    "without labels: the target is agreement with the float model's top-1 per output row "
    "within 0.5 points (rec: per time step), for det (no classes) output SQNR >= 20 dB.",
    "ort-entropy: quantize_static builds its Entropy calibrator with 128 histogram bins and "
    "128 quantized bins, i.e. one candidate (the full range): with its defaults Entropy gives "
    "MinMax's scales exactly. The column gives ORT's EntropyCalibrater TensorRT's 2048 bins.",
    "Output SQNR is measured against ONNX Runtime's float outputs on the evaluation set.",
]


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_model(key: str, row: dict, columns: list, redo: set, save) -> dict:
    """One row: float, ONNX Runtime int8 MinMax and Entropy, each tvm-intq column (those of
    ``columns``). Columns already in ``row`` are kept unless named in ``redo``; ``save(row)``
    after each one."""
    task = load_task(key)
    n_cal, n_ev = (len(next(iter(d.values()))) for d in (task.calib, task.eval))
    log(f"{key}: {task.model.name}, {n_cal} calibration / {n_ev} evaluation samples")
    row.update(
        model=key,
        file=task.model.name,
        metric=task.metric,
        data=task.data,
        calib_samples=n_cal,
        eval_samples=n_ev,
    )
    cols = row.setdefault("columns", {})
    todo = [c for c in columns if c not in cols or c in redo]

    def done(col, cell):
        cols[col] = cell
        save(row)
        log(f"{key}: {col} {cell}")

    t = time.time()
    ref = methods.float_outputs(task)
    done("float", methods.measure(task, ref, ref, time.time() - t))
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods.ORT_METHODS:
            col = f"ort-{method.lower()}"
            if col in todo:
                t = time.time()
                out = methods.ort_outputs(methods.ort_int8(task, method, Path(tmp)), task.eval)
                done(col, methods.measure(task, out, ref, time.time() - t))
    if not any(c in todo for c in TVM_COLUMNS):
        return row
    log(f"{key}: calibrating every configuration from one run of the float model")
    rules = [c for c in methods.CONFIGS if c in todo]  # only the ranges the columns need
    rules += [*methods.AUTO] * ("auto" in todo) + ["percentile"] * ("hybrid-precision" in todo)
    tvm = methods.TvmIntq(task, methods.float_outputs(task, "calib"), columns=dict.fromkeys(rules))
    row["quantization_points"] = tvm.points
    runs = {c: (tvm.column, c) for c in methods.CONFIGS}
    runs["auto"] = (tvm.auto, SEARCH[key])
    runs["hybrid-precision"] = (tvm.hybrid, SEARCH[key], MIN_SQNR.get(key))
    for col, (fn, *args) in runs.items():
        if col in todo:
            out, facts, sec = methods.timed(fn, *args)
            done(col, methods.measure(task, out, ref, sec, **facts))
    return row


def _save(row: dict, path: Path):
    """Write ``row``, keeping columns another run (other ``--columns``) wrote meanwhile."""
    if path.exists():  # in place: run_model keeps adding to this dict
        for col, cell in json.loads(path.read_text()).get("columns", {}).items():
            row["columns"].setdefault(col, cell)
    write_json(row, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        nargs="*",
        default=list(MODELS),
        choices=MODELS,
        help="rows to compute (none: only rebuild the report from eval/results/rows)",
    )
    p.add_argument(
        "--columns",
        nargs="+",
        default=COLUMNS,
        choices=COLUMNS,
        help="compute only these columns (e.g. the quick ones first)",
    )
    p.add_argument(
        "--redo",
        nargs="*",
        default=[],
        choices=COLUMNS,
        help="recompute these columns (others already in eval/results/rows are kept)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    command = "python -m eval.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    for key in args.models:
        path = args.out / "rows" / f"{key}.json"
        row = json.loads(path.read_text()) if path.exists() else {}
        row["command"] = command
        run_model(key, row, args.columns, set(args.redo), lambda r, path=path: _save(r, path))
    rows = [
        json.loads((args.out / "rows" / f"{k}.json").read_text())
        for k in MODELS
        if (args.out / "rows" / f"{k}.json").exists()
    ]
    data = {
        "rows": rows,
        "command": "make eval",
        "last_run": command,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "notes": NOTES,
    }
    for path in write_accuracy(data, args.out):
        log(f"wrote {path}")
    print(accuracy_markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
