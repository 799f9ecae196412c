"""The ``intq`` pipeline: our int8 lowering by name from plain ``tvm.compile``."""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
import tvm
from ort_models import ort_quantize
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_intq
import tvm_intq.compiler.pipeline
from tvm_intq import api
from tvm_intq.demo import bundled
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.frontends.prequantized import import_prequantized

pytestmark = pytest.mark.integration  # whole models, boards or processes

SHAPE = (1, 1, 28, 28)
TARGET = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
X = np.load(bundled("heldout.npz"))["input"][:8]


def run(ex, x=X):
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return np.concatenate(
        [vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(len(x))]
    )


@pytest.fixture(scope="module")
def float_module():
    return from_onnx(onnx.load(bundled("mnist_cnn.onnx")), shape_dict={"input": list(SHAPE)})


@pytest.fixture(scope="module")
def ranges(float_module):
    calib = tvm_intq.calibration.load_npz(bundled("calib.npz"), {"input": SHAPE})
    return tvm_intq.calibrate(tvm_intq.prepare(float_module), calib, progress=False)


def test_registered_once_and_import_twice_is_harmless():
    assert "intq" in relax.pipeline.PIPELINE_MAP
    importlib.reload(tvm_intq.compiler.pipeline)  # registration runs again: must not raise
    assert relax.pipeline.PIPELINE_MAP["intq"].__name__ == "intq_pipeline"


@pytest.mark.parametrize("prepared", [False, True], ids=["float-module", "prepared-module"])
def test_tvm_compile_with_the_named_pipeline_runs_our_integer_program(
    float_module, ranges, prepared
):
    """The same integers as the explicit passes, bit for bit, whether the user hands over the
    imported float module or the prepared one the ranges were calibrated on."""
    mod = tvm_intq.prepare(float_module) if prepared else float_module
    ex = tvm.compile(
        mod, TARGET, relax_pipeline=relax.get_pipeline("intq", ranges=ranges, scheme="hybrid-asym")
    )
    _, integer = api.lower(tvm_intq.prepare(float_module), ranges)
    want = np.concatenate([run_reference(integer, {"input": X[i : i + 1]}) for i in range(len(X))])
    np.testing.assert_array_equal(run(ex), want)


def test_integer_only_and_a_missing_range(float_module, ranges):
    tvm.compile(
        float_module,
        TARGET,  # the bundled model is integer only: the check passes
        relax_pipeline=relax.get_pipeline("intq", ranges=ranges, integer_only=True),
    )
    missing = dict(list(ranges.items())[1:])
    with pytest.raises(Exception, match=f"no calibration range for tensor '{next(iter(ranges))}'"):
        tvm.compile(float_module, TARGET, relax_pipeline=relax.get_pipeline("intq", ranges=missing))


@pytest.mark.integration
def test_without_ranges_a_quantized_module_keeps_its_scales(tmp_path):
    """A QDQ module imported with TVM's own ONNX frontend compiles by name to the program
    import_prequantized gives."""
    path = ort_quantize(tmp_path, "QDQ", "QInt8")
    mod = from_onnx(onnx.load(str(path)), shape_dict={"input": list(SHAPE)})
    ex = tvm.compile(mod, TARGET, relax_pipeline=relax.get_pipeline("intq"))
    integer, _ = import_prequantized(path)
    np.testing.assert_array_equal(run(ex), run(api.build(integer)))
