"""Hybrid precision (S0's H-PTQ): Annotate's float_layers, the gated search model, and the
automatic choice of float layers on the bundled model."""

import numpy as np
import pytest
from conftest import run_vm, three_conv_model

import tvm_intq
from tvm_intq import api
from tvm_intq.calibration import SampleSet, load_npz
from tvm_intq.core.metrics import sqnr_db
from tvm_intq.demo import bundled
from tvm_intq.errors import IntqError
from tvm_intq.frontends import import_model
from tvm_intq.relay_passes import Annotate, FoldToInteger, analyze, float_ops
from tvm_intq.relay_passes.analysis.ir_utils import const_value
from tvm_intq.relay_passes.analysis.rebuild import bindings_of
from tvm_intq.search import float_layers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required"),
]


@pytest.fixture(scope="module")
def small():
    """conv+relu -> conv -> tanh -> conv, calibrated with KL (which clips hard)."""
    rng = np.random.default_rng(0)
    prepared = three_conv_model(rng, bias_mean=0)
    x = (rng.normal(0, 1, (32, 3, 6, 6)) * rng.uniform(0.2, 3.0, (32, 1, 1, 1))).astype(np.float32)
    samples = SampleSet({"x": x})
    ranges = tvm_intq.calibrate(prepared, samples, "kl", progress=False)
    plan = analyze(prepared["main"])
    relu = next(v.name for v in plan.points if v.name.startswith("relu"))
    return prepared, ranges, samples, relu, [v.name for v in plan.points]


def test_annotate_leaves_a_float_layer_unquantized(small):
    prepared, ranges, _, relu, _ = small
    qdq = Annotate(ranges, "hybrid-asym", float_layers=[relu])(prepared)
    binds = {b.var.name: b.value for b in bindings_of(qdq["main"])}
    assert f"{relu}_q" not in binds and f"{relu}_dq" not in binds
    # The group computing it keeps its float weight: conv2d_0 reads a float constant.
    conv0 = binds["conv2d_0"]
    assert const_value(conv0.args[1]) is not None and const_value(conv0.args[1]).dtype == np.float32
    # Its input and every other point are still quantized.
    assert "x_q" in binds and sum(k.endswith("_q") for k in binds) == len(small[4]) - 1
    integer = FoldToInteger()(qdq)
    left = float_ops(integer)
    assert any("conv2d_0" in f for f in left)  # the float layer
    assert any("conv2d_1" in f for f in left)  # its reader computes from a float input
    assert not any("conv2d_2" in f for f in left)  # the rest stays integer


def test_annotate_rejects_unknown_float_layers(small):
    prepared, ranges, *_ = small
    with pytest.raises(Exception, match="nosuch.*not quantization points"):
        Annotate(ranges, "hybrid-asym", float_layers=["nosuch"])(prepared)


def test_gated_model_is_float_at_zero_and_qdq_at_one(small):
    prepared, ranges, samples, relu, points = small
    gated, names = float_layers.gated_module(prepared, ranges, "hybrid-asym")
    assert names == points
    x = samples.arrays["x"][:2]
    zeros, ones = np.zeros(len(names), np.float32), np.ones(len(names), np.float32)
    np.testing.assert_array_equal(run_vm(gated, x, [zeros]), run_vm(prepared, x))
    qdq = Annotate(ranges, "hybrid-asym")(prepared)
    np.testing.assert_allclose(run_vm(gated, x, [ones]), run_vm(qdq, x), rtol=1e-4, atol=1e-4)
    one_float = ones.copy()
    one_float[names.index(relu)] = 0.0
    hyb = Annotate(ranges, "hybrid-asym", float_layers=[relu])(prepared)
    np.testing.assert_allclose(run_vm(gated, x, [one_float]), run_vm(hyb, x), rtol=1e-4, atol=1e-4)


def test_min_sqnr_target_on_the_small_model(small):
    prepared, ranges, samples, _, points = small
    target = float_layers.Target(min_sqnr=30.0)
    sel = float_layers.select_float_layers(prepared, ranges, "hybrid-asym", samples, target)
    assert sel.int8["sqnr_db"] < 30.0 <= sel.hybrid["sqnr_db"]
    assert 1 <= len(sel.layers) < len(points)
    assert all(layer["reason"].startswith("kept float alone") for layer in sel.layers)
    # The integer program with those layers float reaches what the simulation said.
    _, integer = api.lower(prepared, ranges, api.QuantConfig(float_layers=sel.names))
    x = samples.arrays["x"][:8]
    ref = np.concatenate([run_vm(prepared, x[i : i + 2]) for i in range(0, 8, 2)])
    got = np.concatenate([run_vm(integer, x[i : i + 2]) for i in range(0, 8, 2)])
    assert sqnr_db(ref, got) >= 29.0


def test_search_budget_stops_with_the_best_measured_and_says_so(small):
    """No time at all: the ranking stops at once and the all-int8 result comes back, marked;
    every candidate still logs a line."""
    from tvm_intq.search.budget import Budget

    prepared, ranges, samples, *_ = small
    lines = []
    budget = Budget(0.0, lines.append)
    target = float_layers.Target(min_sqnr=99.0)
    sel = float_layers.select_float_layers(
        prepared, ranges, "hybrid-asym", samples, target, budget=budget
    )
    assert sel.budget_exhausted and sel.layers == [] and sel.hybrid == sel.int8
    assert any("time is up" in line for line in lines)
    # With time: one line per candidate, and no layer whose gain was not positive is kept.
    lines.clear()
    sel = float_layers.select_float_layers(
        prepared, ranges, "hybrid-asym", samples, float_layers.Target(min_sqnr=30.0),
        budget=Budget(None, lines.append),
    )  # fmt: skip
    assert sum("float alone" in line for line in lines) == len(sel.ranking)
    assert all(layer["sqnr_gain_db"] > 0 for layer in sel.layers)


def test_targets_need_a_goal_and_labels(small):
    prepared, ranges, samples, *_ = small
    with pytest.raises(IntqError, match="--max-drop.*--min-sqnr"):
        float_layers.Target()
    with pytest.raises(IntqError, match="labels"):
        float_layers.select_float_layers(
            prepared, ranges, "hybrid-asym", samples, float_layers.Target(max_drop=1.0)
        )
    assert float_layers.parse_float_layers(" a, b ,") == ["a", "b"]
    assert float_layers.parse_float_layers("AUTO") == "auto"


# ---------------------------------------------------------------------------------------------
# The bundled model with a bad calibrator
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kl_auto():  # about a minute: calibration, the gated model, ~20 search runs, the int8 model
    model = bundled("mnist_cnn.onnx")
    _, info = import_model(model)
    calib = load_npz(bundled("calib.npz"), info.inputs)
    heldout = load_npz(bundled("heldout.npz"), info.inputs)
    config = api.QuantConfig(calibrator="kl", float_layers="auto", max_drop=0.5, progress=False)
    return api.compile_onnx(model, calib, config, "host", eval_samples=heldout).report


@pytest.mark.integration
def test_auto_float_layers_bring_kl_within_half_a_point_of_float(kl_auto):
    report = kl_auto
    sim = report["hybrid_precision"]["simulated_int8"]
    assert sim["top1_fp32"] - sim["top1"] > 0.005  # KL alone loses more than the budget
    assert report["top1"]["fp32"] - report["top1"]["int8"] <= 0.005
    names = [f["name"] for f in report["float_layers"]]
    assert 1 <= len(names) <= 5
    for f in report["float_layers"]:
        assert f["reason"].startswith("kept float alone") and "top1_gain" in f and f["op"]
    by_name = {layer["name"]: layer for layer in report["layers"]}
    assert all(by_name[n]["precision"] == "float" for n in names if n in by_name)
    assert report["float_ops"]  # not integer-only any more, and says so
    assert report["hybrid_precision"]["target"] == "top-1 within 0.5 points of float"
