"""The float schedule of calibration and evaluation builds (schedules/float_schedule.py): the
same float values bit for bit as TVM's plain loops (the calibration ranges depend on them),
on odd shapes (widths 13/15, 6 and 5 output channels, strides, a pool, a dense) and on the
bundled model, with every conv scheduled."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper

from tvm_intq import api
from tvm_intq.compiler.runner import Runner
from tvm_intq.demo import bundled
from tvm_intq.frontends import import_model
from tvm_intq.relay_passes import ExposeTensors, analyze
from tvm_intq.schedules.float_schedule import FloatSchedule
from tvm_intq.schedules.pipeline import build_pipeline, tuning_pipeline
from tvm_intq.targets import get_target

HOST = get_target("host")


def odd_model(path):
    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1] * 4),
        helper.make_node("Conv", ["c2", "w3"], ["c3"], group=5, pads=[1] * 4),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "odd",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 15, 13))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 7))],
        [
            init("w1", (6, 3, 3, 3)),
            init("b1", (6,)),
            init("w2", (5, 6, 3, 3)),
            init("w3", (5, 1, 3, 3)),
            init("w4", (7, 5)),
            init("b4", (7,)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _both(path, x):
    mod, info = import_model(path)
    prepared = api.prepare(mod)
    names = [v.name for v in analyze(prepared["main"]).points]
    exposed = ExposeTensors(names)(prepared)
    (name,) = info.inputs
    outs = [
        Runner(api.build(exposed, HOST, float_schedule=fast), [name])({name: x})
        for fast in (False, True)
    ]
    return exposed, outs


def _scheduled_kernels(exposed):
    """The kernels the float schedule takes, each checked to be in the build as scheduled (a
    pass scheduling them before it, as the int8 default schedule did, would hide them)."""
    with HOST.target():
        alone = FloatSchedule()(tuning_pipeline(HOST.int8_dot)(exposed))
        built = build_pipeline(HOST.int8_dot, float_schedule=True)(exposed)
    names = sorted(
        gv.name_hint
        for gv, f in alone.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled", False)
    )
    for name in names:  # the same blocks (the float schedule's accumulator and its init)
        assert _blocks(built[name]) == _blocks(alone[name]), name
    return names


def _blocks(func) -> set[str]:
    found = set()
    tvm_ffi.structural_walk(func.body, [(tvm.s_tir.SBlock, lambda b: found.add(b.name_hint))])
    return found


def test_odd_shapes_bit_identical(tmp_path):
    x = np.random.default_rng(1).normal(size=(1, 3, 15, 13)).astype(np.float32)
    exposed, (plain, fast) = _both(odd_model(tmp_path / "odd.onnx"), x)
    assert len(plain) == len(fast) > 3
    for a, b in zip(plain, fast):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    kernels = _scheduled_kernels(exposed)
    assert sum("conv2d" in k for k in kernels) == 3, kernels  # two convs and the grouped one
    assert any("matmul" in k for k in kernels), kernels
    assert any("pool" in k for k in kernels), kernels


@pytest.mark.integration
def test_bundled_model_bit_identical():
    x = np.load(bundled("calib.npz"))["input"][:1]
    exposed, (plain, fast) = _both(bundled("mnist_cnn.onnx"), x)
    for a, b in zip(plain, fast):
        assert np.array_equal(a, b)
    assert sum("conv2d" in k for k in _scheduled_kernels(exposed)) >= 3
