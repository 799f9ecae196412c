"""Calibration sanity: a model's outputs on the calibration data that say the data does not
fit the task (scores that never reach a decision threshold, a constant output) give one
warning line each, naming the output, and nothing for a model that detects something."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from tvm.relax.frontend.onnx import from_onnx

from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.steps import calibrate, prepare

RNG = np.random.default_rng(3)


def detector(score_bias: float):
    """conv -> (boxes, sigmoid scores), concatenated: a detection head in miniature."""
    w = (RNG.standard_normal((3, 2, 3, 3)) * 0.3).astype(np.float32)
    b = np.array([0.0, 0.0, score_bias], np.float32)
    nodes = [
        oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4),
        oh.make_node("Split", ["c", "sizes"], ["box", "logit"], axis=1),
        oh.make_node("Sigmoid", ["logit"], ["score"]),
        oh.make_node("Concat", ["box", "score"], ["detections"], axis=1),
    ]
    graph = oh.make_graph(
        nodes,
        "det",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
        [oh.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 3, 6, 6])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
            numpy_helper.from_array(np.array([2, 1], np.int64), "sizes"),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    return prepare(from_onnx(model))


SAMPLES = SampleSet({"x": RNG.uniform(-1, 1, (8, 2, 6, 6)).astype(np.float32)})


@pytest.mark.parametrize("bias,warned", [(-20.0, True), (0.0, False)])
def test_scores_below_threshold_warn(bias, warned):
    warnings = []
    calibrate(detector(bias), SAMPLES, "minmax", progress=False, warnings=warnings,
              output_names=["detections"])  # fmt: skip
    if warned:
        (line,) = warnings
        assert "output 'detections'" in line and "below 0.5" in line and "sigmoid" in line
    else:
        assert warnings == []


def test_constant_output_warns():
    warnings = []
    const = SampleSet({"x": np.zeros((4, 2, 6, 6), np.float32)})
    calibrate(detector(0.0), const, "minmax", progress=False, warnings=warnings)
    assert warnings and all("constant" in w for w in warnings)
    assert any("output 0" in w for w in warnings)
