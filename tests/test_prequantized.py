"""Models another tool quantized: imported with their own scales, folded to integers.

The round trip: ONNX Runtime's ``quantize_static`` quantizes the bundled model (QDQ and
QOperator formats, int8 and uint8 activations, per-channel int8 weights, see
``ort_models.py``); we import each, compile it for the host and compare with what ONNX
Runtime itself computes on the 1,000 held-out digits.

Where and why the two may differ: ONNX Runtime requantizes in float (``round(acc * (sx sw /
sy)) + zy`` with a float32 multiplier; QLinearMul, QLinearSigmoid and average pooling in float
too), we requantize in fixed point (``(acc MUL + ADD) >> S``, :mod:`tvm_intq.core.intmath`) and
tabulate nonlinear ops in float64. Both round the same real number, so they can differ only
where it lies within a float32 rounding error of a .5 tie: by one unit of an int8 code. A
one-unit difference in a hidden layer can move the output by more than one step, so the
bound is checked on the output (one quantization step ``s_out``). Measured on this machine:
the outputs agree exactly on all 1,000 digits in all four cases (the bound is what the test
holds); ONNX Runtime without ``quant_pre_process`` (BatchNorm quantized as its own layer)
differs by one step on 0.4 % of the logits.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from ort_models import ort_quantize
from tvm import relax

from tvm_intq import api
from tvm_intq.demo import bundled
from tvm_intq.errors import IntqError
from tvm_intq.frontends.prequantized import import_prequantized, is_prequantized
from tvm_intq.relay_passes import float_ops

pytestmark = pytest.mark.integration  # whole models, boards or processes

HELDOUT = np.load(bundled("heldout.npz"))["input"]
RNG = np.random.default_rng(8)
F32 = np.float32


def run_ours(integer, x: np.ndarray, name: str = "input") -> np.ndarray:
    vm = relax.VirtualMachine(api.build(integer), tvm.cpu())
    return np.concatenate(
        [vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(len(x))]
    )


def run_ort(path, x: np.ndarray, name: str = "input") -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def output_scale(path, output: str) -> float:
    """Scale of the DequantizeLinear that writes the model output."""
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    (dq,) = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == output
    ]
    return float(inits[dq.input[1]])


@pytest.fixture(scope="module")
def ort_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ort")
    return {
        (fmt, act): ort_quantize(folder, fmt, act)
        for fmt in ("QDQ", "QOperator")
        for act in ("QInt8", "QUInt8")
    }


# ---------------------------------------------------------------------------------------------
# Round trip: ONNX Runtime's quantize_static -> ours, same integers
# ---------------------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("activations", ["QInt8", "QUInt8"])
def test_onnxruntime_quantized_model_gives_the_same_integers(ort_models, fmt, activations):
    path = ort_models[(fmt, activations)]
    integer, info = import_prequantized(path)
    assert float_ops(integer) == []  # integer only, with ONNX Runtime's own scales
    ours, theirs = run_ours(integer, HELDOUT), run_ort(path, HELDOUT)
    steps = np.abs(ours.astype(np.float64) - theirs) / output_scale(path, "logits")
    assert steps.max() <= 1.0 + 1e-4  # within one quantization step s_out, on every logit
    assert np.mean(steps < 0.5) >= 0.99  # and equal on nearly all (measured: all)
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))


def test_qoperator_and_qdq_formats_give_one_program(ort_models):
    """The QOperator model, rewritten to QDQ, folds to the same kernels as the QDQ model."""

    def kernels(mod):
        return sorted(
            b.value.op.name
            for blk in mod["main"].body.blocks
            for b in blk.bindings
            if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
        )

    qdq, _ = import_prequantized(ort_models[("QDQ", "QInt8")])
    qop, _ = import_prequantized(ort_models[("QOperator", "QInt8")])
    assert kernels(qdq) == kernels(qop)
    x = HELDOUT[:20]
    np.testing.assert_array_equal(run_ours(qdq, x), run_ours(qop, x))


# ---------------------------------------------------------------------------------------------
# Small hand-written graphs: each QOperator rewrite against ONNX Runtime
# ---------------------------------------------------------------------------------------------
def _model(nodes, inits, in_shape, out_shape, ms=False):
    opsets = [helper.make_opsetid("", 17)] + (
        [helper.make_opsetid("com.microsoft", 1)] if ms else []
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def _weights(*shape, bits=8):
    bound = 2 ** (bits - 1) - 1
    return RNG.integers(-bound, bound + 1, size=shape).astype(np.int8)


def _compare(model, tmp_path, in_shape):
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = RNG.uniform(-3, 3, size=(8,) + tuple(in_shape[1:])).astype(F32)
    integer, _ = import_prequantized(path)
    assert float_ops(integer) == []
    theirs, scale = run_ort(path, x, "x"), output_scale(path, "y")
    assert (
        len(np.unique(theirs)) >= 20 and np.mean(np.abs(theirs / scale) > 120) < 0.1
    )  # not saturated
    steps = np.abs(run_ours(integer, x, "x") - theirs) / scale
    assert steps.max() <= 1.0 + 1e-4


def test_qlinear_conv_add_matmul_with_uint8_activations(tmp_path):
    """QLinearConv (per-channel weights, int32 bias), QLinearAdd, MaxPool and Flatten on
    uint8 tensors, QLinearMatMul with per-column weight scales. The weights use 7 bits: ONNX
    Runtime's u8 x s8 kernels on an AVX2 CPU add two products in int16 with saturation, so
    with 8-bit weights its own output is not the model's exact integers (tests/ort_models.py)."""
    u8 = np.uint8
    inits = {
        "sx": F32(0.025),
        "zx": u8(128),
        "s1": F32(0.025),  # the output scales of the 8-bit version, halved with the weights
        "z1": u8(120),
        "s2": F32(0.02),
        "z2": u8(131),
        "s3": F32(0.035),
        "z3": u8(110),
        "s4": F32(0.025),
        "z4": u8(125),
        "W1": _weights(4, 3, 3, 3, bits=7),
        "sw1": RNG.uniform(4e-4, 1e-3, 4).astype(F32),
        "zw1": np.zeros(4, np.int8),
        "B1": RNG.integers(-3000, 3000, 4).astype(np.int32),
        "W2": _weights(4, 3, 1, 1, bits=7),
        "sw2": RNG.uniform(1e-2, 2e-2, 4).astype(F32),
        "zw2": np.zeros(4, np.int8),
        "W3": _weights(36, 5, bits=7),
        "sw3": RNG.uniform(1e-3, 3e-3, 5).astype(F32),
        "zw3": np.zeros(5, np.int8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node(
            "QLinearConv",
            ["xq", "sx", "zx", "W1", "sw1", "zw1", "s1", "z1", "B1"],
            ["c1"],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("QLinearConv", ["xq", "sx", "zx", "W2", "sw2", "zw2", "s2", "z2"], ["c2"]),
        helper.make_node(
            "QLinearAdd",
            ["c1", "s1", "z1", "c2", "s2", "z2", "s3", "z3"],
            ["a"],
            domain="com.microsoft",
        ),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("QLinearMatMul", ["f", "s3", "z3", "W3", "sw3", "zw3", "s4", "z4"], ["m"]),
        helper.make_node("DequantizeLinear", ["m", "s4", "z4"], ["y"]),
    ]
    _compare(_model(nodes, inits, [1, 3, 6, 6], [1, 5], ms=True), tmp_path, [1, 3, 6, 6])


def test_conv_integer_and_matmul_integer_with_scale_and_weight_zero_points(tmp_path):
    """ConvInteger -> Cast -> Mul(per-channel c) and MatMulInteger with per-column weight
    zero points (centred into int8 exactly), as dynamic-quantization tools write them,
    between static QuantizeLinear nodes."""
    inits = {
        "sx": F32(0.025),
        "zx": np.uint8(100),
        "W1": RNG.integers(0, 256, (4, 3, 3, 3)).astype(np.uint8),
        "zw1": np.uint8(128),
        "c1": RNG.uniform(2e-4, 5e-4, (1, 4, 1, 1)).astype(F32),
        "s1": F32(0.05),
        "z1": np.int8(-3),
        "shape": np.array([1, 144], np.int64),
        "W2": RNG.integers(-120, 121, (144, 5)).astype(np.int8),
        "zw2": np.array([3, -2, 0, 5, -4], np.int8),
        "c2": RNG.uniform(1e-3, 2e-3, 5).astype(F32),
        "s2": F32(2.5),
        "z2": np.int8(4),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("ConvInteger", ["xq", "W1", "zx", "zw1"], ["acc1"], pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["acc1"], ["acc1f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc1f", "c1"], ["r1"]),
        helper.make_node("QuantizeLinear", ["r1", "s1", "z1"], ["q1"]),
        helper.make_node("Reshape", ["q1", "shape"], ["q1f"]),
        helper.make_node("MatMulInteger", ["q1f", "W2", "z1", "zw2"], ["acc2"]),
        helper.make_node("Cast", ["acc2"], ["acc2f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["acc2f", "c2"], ["r2"]),
        helper.make_node("QuantizeLinear", ["r2", "s2", "z2"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"]),
    ]
    _compare(_model(nodes, inits, [1, 3, 6, 6], [1, 5]), tmp_path, [1, 3, 6, 6])


# ---------------------------------------------------------------------------------------------
# What cannot be folded is named, in one line
# ---------------------------------------------------------------------------------------------
def _qdq_around(op_nodes, inits, tmp_path, in_shape=(1, 3, 6, 6), out_shape=(1, 4, 6, 6)):
    inits = {"s": F32(0.05), "z": np.int8(0), **inits}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        *op_nodes,
        helper.make_node("QuantizeLinear", ["t", "s", "z"], ["t_quantized"]),
        helper.make_node("DequantizeLinear", ["t_quantized", "s", "z"], ["y"]),
    ]
    path = tmp_path / "bad.onnx"
    onnx.save(_model(nodes, inits, list(in_shape), list(out_shape)), str(path))
    return path


def test_asymmetric_weights_outside_int8_name_the_layer(tmp_path):
    inits = {
        "Wq": np.arange(108, dtype=np.uint8).reshape(4, 3, 3, 3) * 2,
        "sw": F32(0.01),
        "zw": np.uint8(200),
    }
    path = _qdq_around(
        [
            helper.make_node("DequantizeLinear", ["Wq", "sw", "zw"], ["W"]),
            helper.make_node("Conv", ["xd", "W"], ["t"], name="conv_asym", pads=[1, 1, 1, 1]),
        ],
        inits,
        tmp_path,
    )
    with pytest.raises(IntqError, match=r"Conv node 'conv_asym'.*zero point") as err:
        import_prequantized(path)
    assert "\n" not in str(err.value)


def test_a_layer_without_integer_form_names_its_quantize(tmp_path):
    inits = {"roi": np.zeros(0, F32), "scales": np.array([1, 1, 2, 2], F32)}
    path = _qdq_around(
        [helper.make_node("Resize", ["xd", "roi", "scales"], ["t"], mode="linear")],
        inits,
        tmp_path,
        out_shape=(1, 3, 12, 12),
    )
    with pytest.raises(
        IntqError, match=r"QuantizeLinear 't_quantized' \(of image.resize2d\)"
    ) as err:
        import_prequantized(path)
    assert "\n" not in str(err.value)


def test_dynamic_quantization_and_float_models_are_refused(tmp_path):
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dql"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    path = tmp_path / "dyn.onnx"
    onnx.save(_model(nodes, {}, [1, 4], [1, 4]), str(path))
    with pytest.raises(IntqError, match="DynamicQuantizeLinear node 'dql': dynamic quantization"):
        import_prequantized(path)
    assert not is_prequantized(onnx.load(bundled("mnist_cnn.onnx")))
    with pytest.raises(IntqError, match="not a quantized model"):
        import_prequantized(bundled("mnist_cnn.onnx"))


# ---------------------------------------------------------------------------------------------
# Command line: compile without --calib
# ---------------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tvm_intq.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.mark.integration
def test_cli_compiles_a_quantized_model_without_calibration(ort_models, tmp_path):
    path = ort_models[("QOperator", "QUInt8")]
    lib = tmp_path / "m.so"
    done = _cli("compile", path, "-o", lib, "--integer-only")
    assert done.returncode == 0, done.stderr
    assert "integer only" in done.stdout
    np.savez(tmp_path / "x.npz", input=HELDOUT[:16])
    done = _cli("run", lib, "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(
        np.load(tmp_path / "y.npz")["logits"],
        run_ort(path, HELDOUT[:16]),
        atol=output_scale(path, "logits") * 1.0001,
    )
    done = _cli("compile", path, "-o", lib, "--calib", bundled("calib.npz"))
    assert done.returncode == 2 and "already quantized" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
