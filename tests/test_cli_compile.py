"""``tvm-intq compile`` / ``run`` end to end on the bundled model, through the real CLI."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import require_tool

from tvm_intq.cli import main
from tvm_intq.demo import bundled

pytestmark = pytest.mark.integration  # whole models, boards or processes

MODEL = bundled("mnist_cnn.onnx")
REPORT_KEYS = {
    "model",
    "target",
    "scheme",
    "calibrator",
    "integer_only",
    "float_ops",
    "layers",
    "output_sqnr_db",
    "weights_bytes",
    "top1",
}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    data = np.load(bundled("heldout.npz"))
    path = tmp_path_factory.mktemp("data") / "heldout.npz"
    np.savez(path, input=data["input"][:200], labels=data["labels"][:200])
    return path, data["input"][:200], data["labels"][:200]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, heldout):
    out = tmp_path_factory.mktemp("int8")
    assert (
        main(
            [
                "compile",
                str(MODEL),
                "--calib",
                str(bundled("calib.npz")),
                "--eval",
                str(heldout[0]),
                "-o",
                str(out / "m.so"),
                "--report",
                str(out / "report.json"),
                "--integer-only",
                "--no-progress",
            ]
        )
        == 0
    )
    return out


def test_report_has_the_documented_keys(compiled):
    report = json.loads((compiled / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["integer_only"] is True and report["float_ops"] == []
    assert report["weights_bytes"]["int8"] < report["weights_bytes"]["fp32"] / 2
    for layer in report["layers"]:
        assert {"name", "op", "precision", "input_scale", "input_zero_point", "sqnr_db"} <= set(
            layer
        )
        assert layer["precision"] == "int8"
    assert (compiled / "report.png").stat().st_size > 10_000
    # The seconds of compile_onnx's phases (the bar over them is off with --no-progress).
    assert list(report["compile_seconds"]) == ["import", "calibrate", "quantize", "evaluate"]
    assert all(s >= 0 for s in report["compile_seconds"].values())


def test_run_classifies_the_heldout_digits(compiled, heldout, tmp_path):
    path, _, labels = heldout
    assert (
        main(["run", str(compiled / "m.so"), "--input", str(path), "-o", str(tmp_path / "y.npz")])
        == 0
    )
    logits = np.load(tmp_path / "y.npz")["logits"]
    assert logits.shape == (len(labels), 10)
    assert np.mean(logits.argmax(1) == labels) >= 0.95


def test_fp32_library_matches_onnxruntime(tmp_path, heldout):
    path, x, _ = heldout
    assert main(["compile", str(MODEL), "--fp32", "-o", str(tmp_path / "f.so")]) == 0
    assert (
        main(["run", str(tmp_path / "f.so"), "--input", str(path), "-o", str(tmp_path / "y.npz")])
        == 0
    )
    ours = np.load(tmp_path / "y.npz")["logits"]
    session = ort.InferenceSession(str(MODEL))
    theirs = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(20)])
    np.testing.assert_allclose(ours[:20], theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target, machine", [("aarch64", 183), ("riscv64", 243)])
def test_cross_compile_exports_for_the_board(tmp_path, target, machine):
    require_tool(f"{target}-linux-gnu-g++")
    lib = tmp_path / f"m.{target}.so"
    assert (
        main(
            [
                "compile",
                str(MODEL),
                "--calib",
                str(bundled("calib.npz")),
                "--target",
                target,
                "-o",
                str(lib),
                "--no-progress",
            ]
        )
        == 0
    )
    header = lib.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    assert int.from_bytes(header[18:20], "little") == machine
    assert json.loads((tmp_path / f"m.{target}.so.json").read_text())["target"] == target
