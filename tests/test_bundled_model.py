"""The bundled model: integer-only, within 1 point of float, and bit-exact with the numpy
reference of the integer program at every layer."""

import numpy as np
import pytest

import tvm_intq
from tvm_intq import api
from tvm_intq.calibration import load_npz
from tvm_intq.compiler.runner import Runner, run_all
from tvm_intq.demo import bundled
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.frontends import import_model
from tvm_intq.relay_passes import ExposeTensors
from tvm_intq.relay_passes.analysis.rebuild import bindings_of

pytestmark = pytest.mark.integration  # whole models, boards or processes


@pytest.fixture(scope="module")
def compiled():
    model = bundled("mnist_cnn.onnx")
    _, info = import_model(model)
    calib = load_npz(bundled("calib.npz"), info.inputs)
    heldout = load_npz(bundled("heldout.npz"), info.inputs)
    config = api.QuantConfig(integer_only=True, progress=False)
    return api.compile_onnx(model, calib, config, "host", eval_samples=heldout), heldout


def test_integer_only(compiled):
    report = compiled[0].report
    assert report["integer_only"] is True and report["float_ops"] == []
    assert all(layer["precision"] == "int8" for layer in report["layers"])


def test_int8_top1_within_one_point_of_float(compiled):
    top1 = compiled[0].report["top1"]
    assert top1["fp32"] >= 0.97
    assert top1["fp32"] - top1["int8"] <= 0.01


def test_output_sqnr(compiled):
    # Stated bound for the bundled model with the default (percentile) calibrator.
    assert compiled[0].report["output_sqnr_db"] >= 25.0


def test_every_layer_bit_exact_with_numpy_reference(compiled):
    c, heldout = compiled
    names = [b.var.name for b in bindings_of(c.integer["main"]) if b.var.name.endswith("_q")]
    assert len(names) >= 10
    exposed = ExposeTensors(names)(c.integer)
    runner = Runner(tvm_intq.build(exposed), ["input"])
    x = heldout.arrays["input"][:32]
    for i in range(len(x)):
        compiled_out = runner({"input": x[i : i + 1]})
        reference = run_reference(exposed, {"input": x[i : i + 1]})
        for name, got, want in zip(["logits"] + names, compiled_out, reference):
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=f"{name}, sample {i}")


def test_symmetric_scheme_is_integer_only_too(compiled):
    c, heldout = compiled
    ranges = tvm_intq.calibrate(
        c.prepared,
        load_npz(bundled("calib.npz"), c.info.inputs),
        scheme="symmetric",
        progress=False,
    )
    _, integer = tvm_intq.lower(
        c.prepared, ranges, tvm_intq.QuantConfig(scheme="symmetric", integer_only=True)
    )
    (logits,) = run_all(Runner(tvm_intq.build(integer), ["input"]), heldout, 1)
    labels = heldout.extras["labels"]
    assert np.mean(logits.argmax(1) == labels) >= c.report["top1"]["fp32"] - 0.02
