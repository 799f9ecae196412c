"""Every model of onnx's bundled "light" zoo compiles to a pure-integer program and runs.

Their weights are all 0.02 (real architectures, no accuracy to speak of), so this is about
coverage: LRN, inception concat, densenet's pre-activation BatchNorm, shufflenet's channel
shuffle, ONNX Sum, dropout, softmax over 1000 classes. The expected output onnx ships is for
the input ``arange(n)/n``; the int8 program must come close to it.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import tvm_intq
from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.runner import Runner
from tvm_intq.core.metrics import sqnr_db
from tvm_intq.frontends import import_model
from tvm_intq.relay_passes import float_ops

pytestmark = pytest.mark.integration  # whole models, boards or processes

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]


@pytest.mark.integration
@pytest.mark.parametrize("name", MODELS)
def test_light_model_is_integer_only_and_runs(name):
    mod, info = import_model(LIGHT / f"light_{name}.onnx")
    ((input_name, shape),) = info.inputs.items()
    n = int(np.prod(shape))
    x = (np.arange(n).reshape(shape) / n).astype(np.float32)
    prepared = tvm_intq.prepare(mod)
    ranges = tvm_intq.calibrate(prepared, SampleSet({input_name: x}), progress=False)
    _, integer = tvm_intq.lower(prepared, ranges, tvm_intq.QuantConfig(integer_only=True))
    assert float_ops(integer) == []
    (out,) = Runner(tvm_intq.build(integer), [input_name])({input_name: x})
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    assert out.shape == expected.shape and np.all(np.isfinite(out))
    assert sqnr_db(expected, out) >= 20.0
