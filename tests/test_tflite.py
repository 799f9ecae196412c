"""TFLite in: a fully-integer model folds to an integer-only program, a float one calibrates.

The model (``tflite_models.py``, written with the flatbuffers builder: TensorFlow is a
multi-GB install) is what TFLite's full-integer quantization produces: QUANTIZE, CONV_2D with
fused ReLU, DEPTHWISE_CONV_2D (per-channel int8 weights, int32 biases), residual ADD,
MAX_POOL_2D, RESHAPE, FULLY_CONNECTED, DEQUANTIZE, in NHWC. Our integer program matches the
model's arithmetic (``Q(op(DQ(x)))`` per layer, numpy float64) within one output step; measured
here: equal on all 2,000 logits of 200 random inputs. No TFLite interpreter is used (the
runtime wheels are not needed for this).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tflite_models
import tvm
from tvm import relax

from tvm_intq import api
from tvm_intq.calibration import SampleSet
from tvm_intq.frontends.prequantized import import_prequantized
from tvm_intq.relay_passes import float_ops

pytestmark = pytest.mark.integration  # whole models, boards or processes

X = tflite_models.RNG.uniform(-3, 3, (200,) + tflite_models.IN_SHAPE[1:]).astype(np.float32)
STEP = tflite_models.ACT["fc"][1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite")
    paths = {}
    for quantized in (True, False):
        paths[quantized] = folder / f"model.{'int8' if quantized else 'float'}.tflite"
        paths[quantized].write_bytes(tflite_models.build(quantized))
    return paths


def run(integer, x):
    vm = relax.VirtualMachine(api.build(integer), tvm.cpu())
    return np.concatenate(
        [vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(len(x))]
    )


def test_fully_integer_tflite_compiles_to_an_integer_only_program(models):
    integer, info = import_prequantized(models[True])
    assert info.inputs == {"x": tflite_models.IN_SHAPE} and info.outputs == ["y"]
    assert float_ops(integer) == []
    want = np.concatenate([tflite_models.reference(X[i : i + 1]) for i in range(len(X))])
    steps = np.abs(run(integer, X) - want) / STEP
    assert steps.max() <= 1.0 + 1e-4
    assert np.mean(steps < 0.5) >= 0.99  # measured: all equal
    assert len(np.unique(want)) > 100  # a real test: the outputs are not saturated


def test_float_tflite_goes_through_our_calibration(models):
    compiled = api.compile_onnx(
        models[False],
        SampleSet({"x": X[:64]}),
        api.QuantConfig(progress=False),
        eval_samples=SampleSet({"x": X[64:128]}),
    )
    assert compiled.report["integer_only"], compiled.report["float_ops"]
    assert compiled.report["output_sqnr_db"] >= 25


@pytest.mark.integration
def test_cli_compiles_and_runs_a_tflite_model(models, tmp_path):
    lib = tmp_path / "m.so"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tvm_intq.cli",
            "compile",
            str(models[True]),
            "-o",
            str(lib),
            "--integer-only",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    np.savez(tmp_path / "x.npz", x=X[:8])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tvm_intq.cli",
            "run",
            str(lib),
            "--input",
            str(tmp_path / "x.npz"),
            "-o",
            str(tmp_path / "y.npz"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    want = np.concatenate([tflite_models.reference(X[i : i + 1]) for i in range(8)])
    np.testing.assert_allclose(np.load(tmp_path / "y.npz")["y"], want, atol=STEP * 1.0001)
