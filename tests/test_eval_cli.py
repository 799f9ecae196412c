"""``tvm-intq eval``: float vs int8 with per-layer error (S2 Eqs. 23-25), its plot, and the
hybrid-precision and pow2 flags, through the real CLI on the bundled model."""

import json

import numpy as np
import pytest

from tvm_intq.cli import main
from tvm_intq.demo import bundled

pytestmark = pytest.mark.integration  # whole models, boards or processes

MODEL = bundled("mnist_cnn.onnx")
CALIB = bundled("calib.npz")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    data = np.load(bundled("heldout.npz"))
    path = tmp_path_factory.mktemp("data") / "heldout.npz"
    np.savez(path, input=data["input"][:300], labels=data["labels"][:300])
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, heldout):
    """pow2 with one layer kept float on request, per-layer analysis written to a folder."""
    out = tmp_path_factory.mktemp("eval")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(
            [
                "eval",
                str(MODEL),
                "--calib",
                str(CALIB),
                "--eval",
                str(heldout),
                "--scheme",
                "pow2",
                "--calibrator",
                "mse",
                "--float-layers",
                "add_9",
                "--per-layer",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    assert code == 0
    return out, buf.getvalue(), json.loads((out / "report.json").read_text())


def test_prints_top1_summary_and_the_per_layer_table(evaluated):
    _, text, report = evaluated
    assert "top-1: fp32" in text and "int8" in text
    assert "Manhattan" in text and "Euclidean" in text and "SQNR dB" in text
    for layer in report["layers"]:
        assert layer["name"] in text
    assert report["top1"]["fp32"] - report["top1"]["int8"] <= 0.02
    assert "float layers (1): add_9 (requested (--float-layers))" in text


def test_report_has_the_three_metrics_for_every_layer(evaluated):
    _, _, report = evaluated
    layers = report["layers"]
    assert len(layers) >= 10
    for layer in layers:
        assert {"sqnr_db", "manhattan", "euclidean", "precision"} <= set(layer)
        assert layer["manhattan"] >= layer["euclidean"] >= 0  # sum |e| >= sqrt(sum e^2)
        assert layer["sqnr_db"] is not None
    by_name = {layer["name"]: layer for layer in layers}
    assert by_name["add_9"]["precision"] == "float"
    assert report["float_layers"] == [
        {"name": "add_9", "op": "matmul+add", "reason": "requested (--float-layers)"}
    ]


def test_pow2_accumulators_are_pure_shifts_and_fit_int32(evaluated):
    _, _, report = evaluated
    acc = report["accumulators"]
    assert len(acc) >= 6  # every integer conv (the float dense is not listed)
    for a in acc:
        assert a["mul_is_one"] and not a["overflows_int32"]
        assert a["acc_min"] <= 0 <= a["acc_max"] and a["acc_bits"] <= 32
        assert a["with_bias_bits"] >= 1 and a["shift_min"] >= 0


def test_plot_and_histograms_of_the_worst_layers(evaluated):
    out, _, report = evaluated
    assert (out / "per_layer.png").stat().st_size > 20_000
    hists = report["layer_histograms"]
    assert len(hists) == 4
    worst = sorted(la["sqnr_db"] for la in report["layers"] if la["precision"] == "int8")[:4]
    assert sorted(h["sqnr_db"] for h in hists) == worst
    for h in hists:
        assert len(h["edges"]) == len(h["counts"]) + 1
        lo, hi = h["clip_range"]
        assert h["edges"][0] <= min(lo, h["min"]) and h["edges"][-1] >= max(hi, h["max"])
        # pow2: the clipping range is the representable one, +-127 * 2^e
        assert hi == pytest.approx(127 * 2.0 ** round(np.log2(hi / 127)))


def test_auto_without_a_target_fails_before_calibrating(capsys):
    assert (
        main(["eval", str(MODEL), "--calib", str(CALIB), "--float-layers", "auto", "--no-progress"])
        == 2
    )
    assert "--max-drop" in capsys.readouterr().err


def test_unknown_float_layer_is_named(capsys):
    assert (
        main(
            [
                "eval",
                str(MODEL),
                "--calib",
                str(CALIB),
                "--float-layers",
                "relu_0,nosuch",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "nosuch" in err and "relu_0" in err  # the known points are listed


def test_compile_takes_the_hybrid_flags(tmp_path, heldout):
    assert (
        main(
            [
                "compile",
                str(MODEL),
                "--calib",
                str(CALIB),
                "--eval",
                str(heldout),
                "--float-layers",
                "relu_0",
                "-o",
                str(tmp_path / "m.so"),
                "--report",
                str(tmp_path / "r.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert [f["name"] for f in report["float_layers"]] == ["relu_0"]
    assert not report["integer_only"]


def test_summary_names_the_widest_accumulator_and_the_widest_biased_one(evaluated):
    """The int32 claim is about the accumulator; the bias (which can be many accumulator
    units wide) is reported apart, as the int64 requantize's."""
    from tvm_intq.reports.quantization import summary

    _, _, report = evaluated
    acc = report["accumulators"]
    widest = max(acc, key=lambda a: a["acc_bits"])
    biased = max(acc, key=lambda a: a["with_bias_bits"])
    line = next(x for x in summary(report).splitlines() if x.startswith("accumulators:"))
    assert line == (
        f"accumulators: widest {widest['acc_bits']} bits ({widest['name']}); none can overflow "
        f"int32; with the bias (int64): {biased['with_bias_bits']} bits ({biased['name']})"
    )
