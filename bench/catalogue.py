"""The models of ``make bench``: each an ONNX file, calibration samples and a timing input,
made on first use in the model's work folder (``bench/work/<key>/``).

* ``bundled``: the bundled MNIST CNN (its calib.npz; held-out digits with labels: top-1);
* ``unseen``: bench/unseen_cnn.py's small CNN the project never tuned for (64 random images);
* ``ocr_det320``, ``ocr_det640``, ``ocr_rec``, ``ocr_cls``: the PP-OCRv4 models of the
  rapidocr wheel as ``make eval`` prepares them (eval/ocr_models.py: fixed input shape,
  initializers, opset 13, BatchNorm folded), calibrated on ``make eval``'s rendered text
  (eval/tasks.py; fewer samples: det 16 pages, rec 32 lines, cls 64 lines); det at 640x640 on
  the same pages scaled 2x;
* ``light_<name>``: every model of onnx's "light" zoo (onnx/backend/test/data/light/, as
  tests/test_light_zoo.py reads them: real architectures, every weight 0.02), calibrated on
  8 uniform [0, 1) images.

``tvm-intq compile --calib`` keeps the last 10 % of the samples out of calibration for its
report; ONNX Runtime's ``quantize_static`` calibrates on the same 90 %.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LIGHT_SAMPLES = 8
OCR_SAMPLES = {"det": 16, "rec": 32, "cls": 64}


def light_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_names() -> list[str]:
    return sorted(p.stem[len("light_") :] for p in light_dir().glob("light_*.onnx"))


def keys() -> list[str]:
    """Every model key, in table order: small to large, the OCR models, the light zoo."""
    return ["bundled", "unseen", "ocr_cls", "ocr_rec", "ocr_det320", "ocr_det640"] + [
        f"light_{n}" for n in light_names()
    ]


def model_files(key: str, work: Path) -> dict:
    """``{"onnx", "calib", "input", "note"}`` of model ``key`` (paths; made in ``work``)."""
    work.mkdir(parents=True, exist_ok=True)
    if key == "bundled":
        from tvm_intq.demo import bundled

        return {
            "onnx": Path(bundled("mnist_cnn.onnx")),
            "calib": Path(bundled("calib.npz")),
            "input": Path(bundled("heldout.npz")),
            "note": "256 MNIST digits (calib.npz)",
        }
    if key == "unseen":
        sys.path.insert(0, str(HERE))
        import unseen_cnn

        onnx_path, calib = work / "unseen_cnn.onnx", work / "calib.npz"
        if not onnx_path.exists():
            unseen_cnn.make_model(onnx_path)
        if not calib.exists():
            unseen_cnn.make_samples(calib, 64)
        return {"onnx": onnx_path, "calib": calib, "input": calib, "note": "64 random images"}
    if key.startswith("ocr_"):
        return _ocr(key[len("ocr_") :], work)
    if key.startswith("light_"):
        path = light_dir() / f"{key}.onnx"
        if not path.exists():
            raise SystemExit(f"no model {path}")
        calib = work / "calib.npz"
        if not calib.exists():
            from tvm_intq.frontends import import_model

            _, info = import_model(path)
            ((name, shape),) = info.inputs.items()
            rng = np.random.default_rng(0)
            x = rng.random((LIGHT_SAMPLES,) + tuple(shape[1:]), dtype=np.float32)
            np.savez(calib, **{name: x})
        return {
            "onnx": path,
            "calib": calib,
            "input": calib,
            "note": f"{LIGHT_SAMPLES} random images",
        }
    raise SystemExit(f"unknown model {key!r} (known: {', '.join(keys())})")


def _ocr(which: str, work: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from eval import ocr_models
    from eval.tasks import load_task

    base = "det" if which.startswith("det") else which
    calib = work / "calib.npz"
    shape = (1, 3, 640, 640) if which == "det640" else None
    onnx_path = ocr_models.prepare(base, shape=shape)
    n = OCR_SAMPLES[base]
    if not calib.exists():
        task = load_task(base, (n, 1))
        x = task.calib["x"][:n]
        if which == "det640":  # the 320x320 pages scaled 2x (nearest): same text, 4x pixels
            x = x.repeat(2, axis=2).repeat(2, axis=3)
        np.savez(calib, x=x.astype(np.float32))
    what = {"det": "rendered pages", "rec": "rendered lines", "cls": "rendered lines"}[base]
    scaled = ", scaled 2x" if which == "det640" else ""
    return {"onnx": onnx_path, "calib": calib, "input": calib, "note": f"{n} {what}{scaled}"}
