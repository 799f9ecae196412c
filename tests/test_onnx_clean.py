"""ONNX models as exporters leave them import: each quirk that ONNX Runtime reads but that
stopped the ONNX checker or TVM's frontend is built into a small ``onnx.helper`` model, which
must import, build and give ONNX Runtime's output (float, to 1e-5)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from tvm_intq.compiler.runner import Runner
from tvm_intq.compiler.steps import build, prepare
from tvm_intq.frontends.onnx import import_onnx, import_proto
from tvm_intq.frontends.onnx_clean import clean

RNG = np.random.default_rng(0)
W = (RNG.standard_normal((4, 3, 3, 3)) * 0.4).astype(np.float32)


def ints(name, value):
    return numpy_helper.from_array(np.array(value, np.int64), name)


def model(nodes, inits=(), out_shape=(1, 4, 8, 8), in_dims=(1, 3, 8, 8), opset=17, **kw):
    """``x -> Conv(W) -> r -> nodes... -> y``."""
    graph = oh.make_graph(
        [oh.make_node("Conv", ["x", "w"], ["r"], pads=[1] * 4), *nodes],
        "quirk",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, list(in_dims))],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(W, "w"), *inits],
        **kw,
    )
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 7
    return m


def check_runs_like_ort(m, tmp_path, shapes=None):
    """Import ``m`` from a file as ``tvm-intq`` does; its output equals ONNX Runtime's."""
    path = tmp_path / "model.onnx"
    onnx.save(m, path)  # written unchecked: the file is what the exporter left
    mod, info = import_onnx(path, shapes)
    x = RNG.standard_normal(info.inputs["x"]).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    got = Runner(build(prepare(mod)), ["x"])({"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    return mod


def test_output_type_without_shape(tmp_path):
    """The checker wants a shape in every graph output's type; PaddleOCR's exporter wrote
    one without. Shape inference fills it in."""
    m = model([oh.make_node("Relu", ["r"], ["y"])], out_shape=None)
    m.graph.value_info.append(oh.make_tensor_value_info("r", TensorProto.FLOAT, None))
    with pytest.raises(onnx.checker.ValidationError, match="shape"):
        onnx.checker.check_model(m)
    check_runs_like_ort(m, tmp_path)


def shape_arithmetic():
    """``Split`` sizes computed from the tensor's own shape (``C // 2``), behind an Identity
    chain, on a dynamic batch: TVM imported the sizes as a symbolic ShapeExpr and stopped
    ("cannot handle ShapeExpr inputs")."""
    nodes = [
        oh.make_node("Identity", ["r"], ["r1"]),
        oh.make_node("Identity", ["r1"], ["r2"]),
        oh.make_node("Shape", ["r2"], ["s"]),
        oh.make_node("Gather", ["s", "i1"], ["c"], axis=0),
        oh.make_node("Div", ["c", "two"], ["half"]),
        oh.make_node("Unsqueeze", ["half", "ax0"], ["half1"]),
        oh.make_node("Concat", ["half1", "half1"], ["sizes"], axis=0),
        oh.make_node("Split", ["r2", "sizes"], ["a", "b"], axis=1),
        oh.make_node("Shape", ["a"], ["sa"]),
        oh.make_node("Slice", ["sa", "z0", "z1"], ["n"]),
        oh.make_node("Concat", ["n", "m1"], ["flat"], axis=0),
        oh.make_node("Add", ["a", "b"], ["ab"]),
        oh.make_node("Reshape", ["ab", "flat"], ["y"]),
    ]
    inits = [ints("i1", 1), ints("two", 2), ints("ax0", [0]), ints("z0", [0]), ints("z1", [1])]
    inits.append(ints("m1", [-1]))
    return model(nodes, inits, out_shape=["N", 128], in_dims=["N", 3, 8, 8])


def test_shape_arithmetic_on_a_fixed_input(tmp_path):
    m = shape_arithmetic()
    cleaned = clean(m, {"x": (1, 3, 8, 8)})
    assert {n.op_type for n in cleaned.graph.node} == {"Conv", "Split", "Add", "Reshape"}
    mod = check_runs_like_ort(m, tmp_path, {"x": (1, 3, 8, 8)})
    assert "ShapeExpr" not in mod.script()  # every shape is a constant


def test_dynamic_dims_need_input_shape(tmp_path):
    from tvm_intq.errors import IntqError

    path = tmp_path / "dyn.onnx"
    onnx.save(shape_arithmetic(), path)
    with pytest.raises(IntqError, match="--input-shape x:Nx3x8x8"):
        import_onnx(path)
    check_runs_like_ort(shape_arithmetic(), tmp_path, {"x": (2, 3, 8, 8)})


def test_constant_node_weights(tmp_path):
    """Weights and shapes in Constant nodes (torch's exporter writes them so) become
    initializers: the conv weight reaches TVM as a constant, exactly."""
    m = model([oh.make_node("Conv", ["r", "w2"], ["c2"]), oh.make_node("Relu", ["c2"], ["y"])])
    w2 = (RNG.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32)
    m.graph.node.insert(0, oh.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2)))
    cleaned = clean(m)
    assert "Constant" not in {n.op_type for n in cleaned.graph.node}
    init = {i.name: numpy_helper.to_array(i) for i in cleaned.graph.initializer}
    np.testing.assert_array_equal(init["w2"], w2)
    check_runs_like_ort(m, tmp_path)


@pytest.mark.parametrize("opset", [9, 10, 11])
def test_old_opsets(opset, tmp_path):
    """Slice with attributes and Upsample (opset 9), Resize without roi (opset 10): TVM's
    frontend implements these ops at newer versions only; the model is converted to opset 13
    when TVM rejects it at its own."""
    if opset < 10:
        nodes = [
            oh.make_node("Slice", ["r"], ["s"], starts=[1], ends=[7], axes=[2]),
            oh.make_node("Upsample", ["s", "sc"], ["y"], mode="nearest"),
        ]
    elif opset == 10:
        nodes = [
            oh.make_node("Slice", ["r", "st", "en", "ax"], ["s"]),
            oh.make_node("Resize", ["s", "sc"], ["y"], mode="nearest"),
        ]
    else:
        nodes = [
            oh.make_node("Slice", ["r", "st", "en", "ax"], ["s"]),
            oh.make_node("Resize", ["s", "roi", "sc"], ["y"], mode="nearest"),
        ]
    inits = [
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
        numpy_helper.from_array(np.array([], np.float32), "roi"),
        ints("st", [1]),
        ints("en", [7]),
        ints("ax", [2]),
    ]
    check_runs_like_ort(model(nodes, inits, out_shape=(1, 4, 12, 16), opset=opset), tmp_path)


def test_folding_keeps_quantized_weights():
    """A DequantizeLinear of a constant int8 weight is what a pre-quantized model is made of:
    never folded into float."""
    qw = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    nodes = [oh.make_node("DequantizeLinear", ["qw", "sw"], ["w"])]
    graph = oh.make_graph(
        [*nodes, oh.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)],
        "qdq",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(qw, "qw"), numpy_helper.from_array(np.float32(0.02), "sw")],
    )
    m = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    assert [n.op_type for n in clean(m).graph.node] == ["DequantizeLinear", "Conv"]
    import_proto(clean(m), "qdq.onnx")
