"""The main job on the bundled model: float and int8 through TVM, side by side.

The bundled model is a small CNN trained on real MNIST digits (``tools/make_bundled_model.py``
re-creates it); it has conv, depthwise conv, residual add, concat, pools, dense and several
lookup-table activations, so it exercises every integer kernel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from tvm_intq import api
from tvm_intq.calibration import load_npz
from tvm_intq.compiler.runner import Runner, latency_ms
from tvm_intq.deploy.library import save_library
from tvm_intq.frontends import import_model
from tvm_intq.reports.quantization import write_report
from tvm_intq.targets import get_target

MODEL = "mnist_cnn.onnx"


def bundled(name: str) -> Path:
    """Path of a file shipped in ``tvm_intq/data``."""
    return Path(str(resources.files("tvm_intq") / "data" / name))


def run(out_dir: Path, calibrator: str | None = None) -> dict:
    """Compile fp32 and int8 for the host, evaluate on the held-out digits, time one inference
    of each, and write the libraries and the report into ``out_dir``. Returns the table rows."""
    model = bundled(MODEL)
    _, info = import_model(model)
    calib = load_npz(bundled("calib.npz"), info.inputs, info.input_dtypes)
    heldout = load_npz(bundled("heldout.npz"), info.inputs, info.input_dtypes)
    config = api.QuantConfig(calibrator=calibrator or api.DEFAULT_CALIBRATOR, integer_only=True)
    compiled = api.compile_onnx(model, calib, config, "host", eval_samples=heldout)
    rep = compiled.report
    json_path, png = write_report(rep, out_dir / "report.json")

    host = get_target("host")
    feeds, _ = next(heldout.batches(info.batch_size))
    rows = []
    for label, module in (("TVM fp32", compiled.prepared), ("TVM int8", compiled.integer)):
        precision = label.split()[1]
        executable = api.build(module, host)
        library = out_dir / f"{model.stem}.{precision}.so"
        save_library(
            executable,
            host,
            library,
            {
                "model": str(model),
                "target": "host",
                "precision": precision,
                "inputs": {k: list(v) for k, v in info.inputs.items()},
                "input_dtypes": info.input_dtypes,
                "outputs": info.outputs,
            },
        )
        lat = latency_ms(Runner(executable, list(info.inputs)), feeds)
        rows.append(
            {
                "model": label,
                "top-1 %": 100 * rep["top1"][precision],
                "output SQNR dB": None if precision == "fp32" else rep["output_sqnr_db"],
                "weight bytes": rep["weights_bytes"][precision],
                "latency ms (p50, untuned)": lat["p50"],
                "library": str(library),
            }
        )
    notes = [
        f"{rep['num_eval_samples']} held-out digits; integer only: {rep['integer_only']}",
        f"report: {json_path}, per-layer SQNR plot: {png}",
        "latency is untuned TVM on this host: tuning (tvm-intq tune) is what makes int8 fast",
    ]
    return {"rows": rows, "columns": list(rows[0]), "notes": notes, "report": rep}
