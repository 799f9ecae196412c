"""CanonicalizeQDQ and its parts, Before -> Expected, and the weight forms FoldToInteger reads."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from tvm_intq.relay_passes import CanonicalizeQDQ, FoldToInteger, float_ops
from tvm_intq.relay_passes.constant_last import ConstantLast
from tvm_intq.relay_passes.quantize_into_concat import QuantizeIntoConcat
from tvm_intq.relay_passes.sink_permutes import SinkPermutes
from tvm_intq.relay_passes.weights_as_constants import WeightsAsConstants

RNG = np.random.default_rng(5)
F32 = np.float32


def const(v):
    return relax.const(np.asarray(v))


def function(params, body):
    """``main(params)`` whose dataflow block is ``body(bb, *params)`` (returns the output)."""
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            gv = bb.emit_output(body(bb, *params))
        bb.emit_func_output(gv)
    return bb.get()


QW = RNG.integers(-127, 128, (10, 6)).astype(np.int8)
SW = RNG.uniform(0.01, 0.02, 10).astype(F32)
ZW = np.zeros(10, np.int8)


def test_weights_as_constants_moves_a_transpose_into_the_int8_constant():
    x = relax.Var("x", relax.TensorType((1, 6), "float32"))
    before = function(
        [x],
        lambda bb, x: bb.emit(
            R.matmul(
                x,
                bb.emit(
                    R.permute_dims(
                        bb.emit(R.dequantize(const(QW), const(SW), const(ZW), axis=0)), [1, 0]
                    )
                ),
            )
        ),
    )
    x = relax.Var("x", relax.TensorType((1, 6), "float32"))
    expected = function(
        [x],
        lambda bb, x: bb.emit(
            R.matmul(x, bb.emit(R.dequantize(const(QW.T.copy()), const(SW), const(ZW), axis=1)))
        ),
    )
    tvm.ir.assert_structural_equal(WeightsAsConstants()(before), expected)


def test_weights_as_constants_follows_a_depthwise_reshape_and_an_int8_transpose():
    """TFLite's depthwise weight (1, KH, KW, C) per channel on axis 3 -> (KH, KW, C, 1): the
    channel axis becomes 2; a transpose of the int8 constant itself folds into it."""
    w = RNG.integers(-127, 128, (1, 3, 3, 4)).astype(np.int8)
    s = RNG.uniform(0.01, 0.02, 4).astype(F32)
    z = np.zeros(4, np.int8)
    x = relax.Var("x", relax.TensorType((1, 3, 3, 4), "float32"))

    def body(bb, x):
        wd = bb.emit(
            R.reshape(bb.emit(R.dequantize(const(w), const(s), const(z), axis=3)), (3, 3, 4, 1))
        )
        wt = bb.emit(
            R.dequantize(bb.emit(R.permute_dims(const(QW), [1, 0])), const(SW), const(ZW), axis=1)
        )
        return relax.Tuple([wd, wt])

    after = WeightsAsConstants()(function([x], body))
    deqs = {
        b.value.args[0].value.numpy().shape: b.value
        for blk in after["main"].body.blocks
        for b in blk.bindings
        if isinstance(b.value, relax.Call) and b.value.op.name == "relax.dequantize"
    }
    assert sorted(deqs) == [(3, 3, 4, 1), (6, 10)]
    assert int(deqs[(3, 3, 4, 1)].attrs.axis) == 2 and int(deqs[(6, 10)].attrs.axis) == 1
    np.testing.assert_array_equal(deqs[(3, 3, 4, 1)].args[0].value.numpy(), w.reshape(3, 3, 4, 1))
    np.testing.assert_array_equal(deqs[(6, 10)].args[0].value.numpy(), QW.T)


def test_sink_permutes_puts_the_bias_and_quantize_back_on_the_conv():
    b = RNG.normal(size=8).astype(F32)
    x = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))

    def before_body(bb, x):
        t = bb.emit(R.permute_dims(x, [0, 2, 3, 1]))
        y = bb.emit(R.add(t, const(b)))
        return bb.emit(R.quantize(y, const(F32(0.1)), const(np.int8(3)), axis=-1, out_dtype="int8"))

    def expected_body(bb, x):
        y = bb.emit(R.add(x, const(b.reshape(1, 8, 1, 1))))
        q = bb.emit(R.quantize(y, const(F32(0.1)), const(np.int8(3)), axis=-1, out_dtype="int8"))
        return bb.emit(R.permute_dims(q, [0, 2, 3, 1]))

    after = SinkPermutes()(function([x], before_body))
    x2 = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))
    tvm.ir.assert_structural_equal(after, function([x2], expected_body))


def _qdq_dense(bias_q, weight_zp=ZW, axis=0):
    """quantize(x) -> dense with dequantized int8 weight (Gemm-style transpose) and an int32
    bias through dequantize -> quantize: what TVM's ONNX frontend makes of a QDQ Gemm."""
    x = relax.Var("x", relax.TensorType((1, 6), "float32"))
    sx, so = F32(0.05), F32(0.2)

    def body(bb, x):
        q = bb.emit(R.quantize(x, const(sx), const(np.int8(-3)), axis=1, out_dtype="int8"))
        xd = bb.emit(R.dequantize(q, const(sx), const(np.int8(-3)), axis=1, out_dtype="float32"))
        w = bb.emit(
            R.permute_dims(
                bb.emit(R.dequantize(const(QW), const(SW), const(weight_zp), axis=axis)), [1, 0]
            )
        )
        bias = bb.emit(
            R.dequantize(
                const(bias_q), const((sx * SW).astype(F32)), const(np.zeros(10, np.int32)), axis=0
            )
        )
        y = bb.emit(R.add(bb.emit(R.matmul(xd, w)), bias))
        qo = bb.emit(R.quantize(y, const(so), const(np.int8(4)), axis=1, out_dtype="int8"))
        return bb.emit(R.dequantize(qo, const(so), const(np.int8(4)), axis=1, out_dtype="float32"))

    return function([x], body)


def test_canonicalize_qdq_keeps_int8_weights_and_folds_the_int32_bias():
    bias_q = RNG.integers(-500, 500, 10).astype(np.int32)
    canonical = CanonicalizeQDQ()(_qdq_dense(bias_q))
    values = {b.var.name: b.value for blk in canonical["main"].body.blocks for b in blk.bindings}
    weight = values[values["matmul_0"].args[1].name]
    assert weight.op.name == "relax.dequantize" and weight.args[0].value.numpy().dtype == np.int8
    np.testing.assert_array_equal(weight.args[0].value.numpy(), QW.T)
    bias = values["add_0"].args[1].value.numpy()  # a float constant now
    np.testing.assert_allclose(bias, bias_q * (F32(0.05) * SW), rtol=1e-6)
    assert float_ops(FoldToInteger()(canonical)) == []


def test_fold_to_integer_leaves_weights_it_cannot_fold_exactly_in_float():
    """A non-zero weight zero point, or scales along the input axis: no integer layer."""
    bias_q = np.zeros(10, np.int32)
    nonzero = CanonicalizeQDQ()(_qdq_dense(bias_q, weight_zp=np.full(10, 2, np.int8)))
    assert "matmul_0 = matmul" in float_ops(FoldToInteger()(nonzero))
    x = relax.Var("x", relax.TensorType((1, 6), "float32"))
    sw_in = RNG.uniform(0.01, 0.02, 6).astype(F32)

    def body(bb, x):  # weight (6, 10) scaled per input row: axis 0 of a matmul weight
        q = bb.emit(R.quantize(x, const(F32(0.05)), const(np.int8(0)), axis=1, out_dtype="int8"))
        xd = bb.emit(
            R.dequantize(q, const(F32(0.05)), const(np.int8(0)), axis=1, out_dtype="float32")
        )
        w = bb.emit(
            R.dequantize(const(QW.T.copy()), const(sw_in), const(np.zeros(6, np.int8)), axis=0)
        )
        y = bb.emit(R.matmul(xd, w))
        return bb.emit(R.quantize(y, const(F32(0.2)), const(np.int8(0)), axis=1, out_dtype="int8"))

    assert any(
        "matmul" in op for op in float_ops(FoldToInteger()(CanonicalizeQDQ()(function([x], body))))
    )


def _q(x, s, z):
    return R.quantize(x, const(F32(s)), const(np.int8(z)), axis=-1, out_dtype="int8")


def _dq(q, s, z):
    return R.dequantize(q, const(F32(s)), const(np.int8(z)), axis=-1, out_dtype="float32")


def test_constant_last_puts_a_linear_bias_second():
    """PyTorch's linear imports as add(bias, matmul): the bias goes second, where a layer's
    epilogue has it; a subtract keeps its order."""
    b = RNG.normal(size=4).astype(F32)
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    before = function(
        [x],
        lambda bb, x: bb.emit(
            R.subtract(const(b), bb.emit(R.multiply(const(F32(2)), bb.emit(R.add(const(b), x)))))
        ),
    )
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    expected = function(
        [x],
        lambda bb, x: bb.emit(
            R.subtract(const(b), bb.emit(R.multiply(bb.emit(R.add(x, const(b))), const(F32(2)))))
        ),
    )
    tvm.ir.assert_structural_equal(ConstantLast()(before), expected)


def test_quantize_into_concat_quantizes_each_unquantized_part():
    """quantize(concat(tanh(dq a), dq b)) -> concat(quantize(tanh(dq a)), quantize(dq b)):
    the same int8 values, and each part then folds on its own (a table, a requantize)."""
    a = relax.Var("a", relax.TensorType((1, 2, 3, 3), "int8"))
    b = relax.Var("b", relax.TensorType((1, 2, 3, 3), "int8"))

    def before_body(bb, a, b):
        t = bb.emit(R.tanh(bb.emit(_dq(a, 0.05, 3))))
        c = bb.emit(R.concat([t, bb.emit(_dq(b, 0.02, -7))], axis=1))
        return bb.emit(_dq(bb.emit(_q(c, 0.01, 0)), 0.01, 0))

    def expected_body(bb, a, b):
        t = bb.emit(R.tanh(bb.emit(_dq(a, 0.05, 3))))
        d = bb.emit(_dq(b, 0.02, -7))
        c = bb.emit(R.concat([bb.emit(_q(t, 0.01, 0)), bb.emit(_q(d, 0.01, 0))], axis=1))
        return bb.emit(_dq(c, 0.01, 0))

    before = function([a, b], before_body)
    a = relax.Var("a", relax.TensorType((1, 2, 3, 3), "int8"))
    b = relax.Var("b", relax.TensorType((1, 2, 3, 3), "int8"))
    tvm.ir.assert_structural_equal(QuantizeIntoConcat()(before), function([a, b], expected_body))
    # ... and all of it becomes integer arithmetic.
    assert float_ops(FoldToInteger()(QuantizeIntoConcat()(before))) == []


def test_quantize_into_concat_leaves_a_concat_of_dequantized_tensors():
    a = relax.Var("a", relax.TensorType((1, 2, 3, 3), "int8"))
    before = function(
        [a],
        lambda bb, a: bb.emit(
            _q(
                bb.emit(R.concat([bb.emit(_dq(a, 0.05, 3)), bb.emit(_dq(a, 0.05, 3))], axis=1)),
                0.01,
                0,
            )
        ),
    )
    tvm.ir.assert_structural_equal(QuantizeIntoConcat()(before), before)
