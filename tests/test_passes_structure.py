"""Structure of the graph passes: ``Before`` and ``Expected`` modules in TVMScript, compared with
``tvm.ir.assert_structural_equal`` (the style of TVM's ``tests/python/relax/test_transform_*``).

Tensor constants are written as parameters of ``main`` and bound with ``BindParams``: the
Expected constants are computed here in numpy from the paper's equations (BN folding; S2
Eqs. 18-22 for the quantization parameters).
"""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from tvm_intq.core import intmath
from tvm_intq.relay_passes import Annotate, ClipKernelsToOps, FoldBatchNorm, analyze
from tvm_intq.relay_passes.analysis.ir_utils import const_value

F32 = np.float32
RNG = np.random.default_rng(5)


def bind(mod, **params):
    return relax.transform.BindParams("main", {k: np.asarray(v) for k, v in params.items()})(mod)


def run(mod, *args):
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()


# ---------------------------------------------------------------------------------------------
# FoldBatchNorm
# ---------------------------------------------------------------------------------------------
@I.ir_module
class ConvBiasBatchNorm:
    """conv2d + bias + BatchNorm as DecomposeOpsForInference + FoldConstant leave it."""

    @R.function
    def main(
        x: R.Tensor((1, 3, 8, 8), "float32"),
        w: R.Tensor((4, 3, 3, 3), "float32"),
        b: R.Tensor((1, 4, 1, 1), "float32"),
        mean: R.Tensor((1, 4, 1, 1), "float32"),
        std: R.Tensor((1, 4, 1, 1), "float32"),
        gamma: R.Tensor((1, 4, 1, 1), "float32"),
        beta: R.Tensor((1, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            conv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            biased = R.add(conv, b)
            centered = R.subtract(biased, mean)
            normed = R.divide(centered, std)
            scaled = R.multiply(normed, gamma)
            gv = R.add(scaled, beta)
            R.output(gv)
        return gv


@I.ir_module
class ConvBias:
    @R.function
    def main(
        x: R.Tensor((1, 3, 8, 8), "float32"),
        w: R.Tensor((4, 3, 3, 3), "float32"),
        b: R.Tensor((1, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            conv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            out = R.add(conv, b)
            gv = out
            R.output(gv)
        return gv


def bn_constants():
    c = {
        "w": RNG.normal(size=(4, 3, 3, 3)),
        "b": RNG.normal(size=(1, 4, 1, 1)),
        "mean": RNG.normal(size=(1, 4, 1, 1)),
        "std": RNG.uniform(0.5, 2, size=(1, 4, 1, 1)),
        "gamma": RNG.uniform(0.5, 2, size=(1, 4, 1, 1)),
        "beta": RNG.normal(size=(1, 4, 1, 1)),
    }
    return {k: v.astype(F32) for k, v in c.items()}


def test_fold_batch_norm_into_conv():
    c = bn_constants()
    before = bind(ConvBiasBatchNorm, **c)
    after = FoldBatchNorm()(before)
    # W' = W * gamma / std, b' = (b - mean) / std * gamma + beta, folded in float64 in the
    # order the chain applies them, stored as float32.
    d = {k: v.astype(np.float64).reshape(-1) for k, v in c.items() if k != "w"}
    w = c["w"].astype(np.float64) / d["std"].reshape(-1, 1, 1, 1) * d["gamma"].reshape(-1, 1, 1, 1)
    b = (d["b"] - d["mean"]) / d["std"] * d["gamma"] + d["beta"]
    expected = bind(ConvBias, w=w.astype(F32), b=b.astype(F32).reshape(1, 4, 1, 1))
    tvm.ir.assert_structural_equal(after, expected)
    x = RNG.normal(size=(1, 3, 8, 8)).astype(F32)
    np.testing.assert_allclose(run(after, x), run(before, x), rtol=1e-5, atol=1e-5)


@I.ir_module
class ConvAddAlongWidth:
    @R.function
    def main(
        x: R.Tensor((1, 3, 8, 4), "float32"),
        w: R.Tensor((4, 3, 3, 3), "float32"),
        k: R.Tensor((4,), "float32"),
    ) -> R.Tensor((1, 4, 8, 4), "float32"):
        with R.dataflow():
            conv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            gv = R.add(conv, k)  # k broadcasts along W (the last axis), not along channels
            R.output(gv)
        return gv


def test_fold_batch_norm_leaves_constants_along_other_axes():
    before = bind(
        ConvAddAlongWidth,
        w=RNG.normal(size=(4, 3, 3, 3)).astype(F32),
        k=RNG.normal(size=4).astype(F32),
    )
    tvm.ir.assert_structural_equal(FoldBatchNorm()(before), before)


@I.ir_module
class ConvScaleHardswish:
    """PP-OCR's block: conv, a learnable scalar affine, hardswish (``y`` read twice)."""

    @R.function
    def main(
        x: R.Tensor((1, 3, 8, 8), "float32"),
        w: R.Tensor((4, 3, 3, 3), "float32"),
        s: R.Tensor((), "float32"),
        t: R.Tensor((), "float32"),
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            conv = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            y = R.add(R.multiply(conv, s), t)
            gate = R.clip(R.add(y, R.const(3.0, "float32")), 0.0, 6.0)
            gv = R.divide(R.multiply(y, gate), R.const(6.0, "float32"))
            R.output(gv)
        return gv


def test_fold_stops_where_the_value_has_other_users():
    """The scale and shift fold into the conv; hardswish's ``y + 3`` does not: its ``y`` is
    also multiplied, and folding would compute the conv twice."""
    w, s, t = RNG.normal(size=(4, 3, 3, 3)).astype(F32), np.float32(1.7), np.float32(-0.3)
    before = bind(ConvScaleHardswish, w=w, s=s, t=t)
    after = FoldBatchNorm()(before)
    ops = [
        b.value.op.name
        for b in after["main"].body.blocks[0].bindings
        if isinstance(b.value, relax.Call)
    ]
    assert ops.count("relax.nn.conv2d") == 1
    assert ops[:2] == ["relax.nn.conv2d", "relax.add"] and "relax.multiply" in ops[2:]
    conv = after["main"].body.blocks[0].bindings[0].value
    np.testing.assert_allclose(const_value(conv.args[1]), w * s, rtol=1e-6)
    x = RNG.normal(size=(1, 3, 8, 8)).astype(F32)
    np.testing.assert_allclose(run(after, x), run(before, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# ClipKernelsToOps
# ---------------------------------------------------------------------------------------------
@I.ir_module
class ImportedClip:
    """What the ONNX frontend makes of Clip(x, 0, 6), after FoldConstant."""

    @T.prim_func(private=True, s_tir=True)
    def maximum(
        x: T.Buffer((T.int64(1), T.int64(4)), "float32"),
        c: T.Buffer((), "float32"),
        out: T.Buffer((T.int64(1), T.int64(4)), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for ax0, ax1 in T.grid(T.int64(1), T.int64(4)):
            with T.sblock("T_maximum"):
                v0, v1 = T.axis.remap("SS", [ax0, ax1])
                out[v0, v1] = T.max(x[v0, v1], c[()])

    @T.prim_func(private=True, s_tir=True)
    def minimum(
        x: T.Buffer((T.int64(1), T.int64(4)), "float32"),
        c: T.Buffer((), "float32"),
        out: T.Buffer((T.int64(1), T.int64(4)), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for ax0, ax1 in T.grid(T.int64(1), T.int64(4)):
            with T.sblock("T_minimum"):
                v0, v1 = T.axis.remap("SS", [ax0, ax1])
                out[v0, v1] = T.min(x[v0, v1], c[()])

    @R.function
    def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
        R.func_attr({"num_input": 1})
        cls = ImportedClip
        with R.dataflow():
            lo = R.call_tir(
                cls.maximum, (x, R.const(0.0, "float32")), out_ty=R.Tensor((1, 4), "float32")
            )
            hi = R.call_tir(
                cls.minimum, (lo, R.const(6.0, "float32")), out_ty=R.Tensor((1, 4), "float32")
            )
            gv = hi
            R.output(gv)
        return gv


@I.ir_module
class ClipAsOps:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
        R.func_attr({"num_input": 1})
        with R.dataflow():
            lo = R.maximum(x, R.const(0.0, "float32"))
            hi = R.minimum(lo, R.const(6.0, "float32"))
            gv = hi
            R.output(gv)
        return gv


def test_clip_kernels_become_operators():
    after = ClipKernelsToOps()(ImportedClip)
    tvm.ir.assert_structural_equal(after, ClipAsOps)  # the unused PrimFuncs are gone too
    x = np.array([[-1.0, 2.0, 7.0, 6.0]], F32)
    np.testing.assert_array_equal(run(after, x), run(ImportedClip, x))


@I.ir_module
class MaximumOfTwoTensors:
    @T.prim_func(private=True, s_tir=True)
    def maximum(
        x: T.Buffer((T.int64(1), T.int64(4)), "float32"),
        y: T.Buffer((T.int64(1), T.int64(4)), "float32"),
        out: T.Buffer((T.int64(1), T.int64(4)), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        for ax0, ax1 in T.grid(T.int64(1), T.int64(4)):
            with T.sblock("T_maximum"):
                v0, v1 = T.axis.remap("SS", [ax0, ax1])
                out[v0, v1] = T.max(x[v0, v1], y[v0, v1])

    @R.function
    def main(x: R.Tensor((1, 4), "float32"), y: R.Tensor((1, 4), "float32")) -> R.Tensor(
        (1, 4), "float32"
    ):
        cls = MaximumOfTwoTensors
        with R.dataflow():
            gv = R.call_tir(cls.maximum, (x, y), out_ty=R.Tensor((1, 4), "float32"))
            R.output(gv)
        return gv


def test_clip_kernels_leaves_other_kernels_alone():
    tvm.ir.assert_structural_equal(ClipKernelsToOps()(MaximumOfTwoTensors), MaximumOfTwoTensors)


# ---------------------------------------------------------------------------------------------
# Annotate: quantization points and QDQ pairs
# ---------------------------------------------------------------------------------------------
@I.ir_module
class ConvReluConv:
    @R.function
    def main(
        x: R.Tensor((1, 3, 8, 8), "float32"),
        w1: R.Tensor((4, 3, 3, 3), "float32"),
        b1: R.Tensor((1, 4, 1, 1), "float32"),
        w2: R.Tensor((2, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 2, 8, 8), "float32"):
        with R.dataflow():
            conv2d_0 = R.nn.conv2d(x, w1, padding=[1, 1, 1, 1])
            add_0 = R.add(conv2d_0, b1)
            relu_0 = R.nn.relu(add_0)
            conv2d_1 = R.nn.conv2d(relu_0, w2)
            R.output(conv2d_1)
        return conv2d_1


@I.ir_module
class ConvReluConvQDQ:
    @R.function
    def main(
        x: R.Tensor((1, 3, 8, 8), "float32"),
        s_x: R.Tensor((), "float32"),
        z_x: R.Tensor((), "int8"),
        qw1: R.Tensor((4, 3, 3, 3), "int8"),
        sw1: R.Tensor((4,), "float32"),
        zw1: R.Tensor((4,), "int8"),
        b1: R.Tensor((1, 4, 1, 1), "float32"),
        s_r: R.Tensor((), "float32"),
        z_r: R.Tensor((), "int8"),
        qw2: R.Tensor((2, 4, 1, 1), "int8"),
        sw2: R.Tensor((2,), "float32"),
        zw2: R.Tensor((2,), "int8"),
        s_o: R.Tensor((), "float32"),
        z_o: R.Tensor((), "int8"),
    ) -> R.Tensor((1, 2, 8, 8), "float32"):
        with R.dataflow():
            x_q = R.quantize(x, s_x, z_x, axis=-1, out_dtype="int8")
            x_dq = R.dequantize(x_q, s_x, z_x, axis=-1, out_dtype="float32")
            w1_dq = R.dequantize(qw1, sw1, zw1, axis=0, out_dtype="float32")
            conv2d_0 = R.nn.conv2d(x_dq, w1_dq, padding=[1, 1, 1, 1])
            add_0 = R.add(conv2d_0, b1)
            relu_0 = R.nn.relu(add_0)
            relu_0_q = R.quantize(relu_0, s_r, z_r, axis=-1, out_dtype="int8")
            relu_0_dq = R.dequantize(relu_0_q, s_r, z_r, axis=-1, out_dtype="float32")
            w2_dq = R.dequantize(qw2, sw2, zw2, axis=0, out_dtype="float32")
            conv2d_1 = R.nn.conv2d(relu_0_dq, w2_dq)
            conv2d_1_q = R.quantize(conv2d_1, s_o, z_o, axis=-1, out_dtype="int8")
            conv2d_1_dq = R.dequantize(conv2d_1_q, s_o, z_o, axis=-1, out_dtype="float32")
            gv = conv2d_1_dq  # rewrite_main's emit_output
            R.output(gv)
        return gv


RANGES = {"x": (-2.0, 3.0), "relu_0": (0.0, 5.0), "conv2d_1": (-4.0, 1.5)}


@pytest.mark.parametrize("scheme", ["hybrid-asym", "symmetric"])
def test_annotate_conv_relu_conv(scheme):
    w1 = RNG.normal(size=(4, 3, 3, 3)).astype(F32)
    w1[2] *= 10  # channels of very different magnitude: per-channel scales matter
    b1 = RNG.normal(size=(1, 4, 1, 1)).astype(F32)
    w2 = RNG.normal(size=(2, 4, 1, 1)).astype(F32)
    before = bind(ConvReluConv, w1=w1, b1=b1, w2=w2)

    # The conv's bias and ReLU sit inside its group: the points are the input, the ReLU output
    # and the second conv's output, in program order.
    assert [v.name for v in analyze(before["main"]).points] == ["x", "relu_0", "conv2d_1"]

    symmetric = scheme == "symmetric"
    act = {t: intmath.activation_qparams(*r, symmetric=symmetric) for t, r in RANGES.items()}
    if not symmetric:  # Eq. 19 on these ranges: -round((127 lo + 128 hi) / (hi - lo))
        assert {t: p.zero_point for t, p in act.items()} == {
            "x": -26,
            "relu_0": -128,
            "conv2d_1": 57,
        }
    qw1, sw1 = intmath.weight_qparams(w1, 0)
    qw2, sw2 = intmath.weight_qparams(w2, 0)
    # Eq. 22 per output channel: each channel's largest |w| is code +-127.
    assert np.all(np.abs(qw1.reshape(4, -1).astype(int)).max(axis=1) == 127)

    def scalar(p):
        return F32(p.scale), np.int8(p.zero_point)

    (s_x, z_x), (s_r, z_r), (s_o, z_o) = (scalar(act[t]) for t in RANGES)
    expected = bind(
        ConvReluConvQDQ,
        s_x=s_x,
        z_x=z_x,
        qw1=qw1,
        sw1=sw1.astype(F32),
        zw1=np.zeros(4, np.int8),
        b1=b1,
        s_r=s_r,
        z_r=z_r,
        qw2=qw2,
        sw2=sw2.astype(F32),
        zw2=np.zeros(2, np.int8),
        s_o=s_o,
        z_o=z_o,
    )
    after = Annotate(RANGES, scheme)(before)
    tvm.ir.assert_structural_equal(after, expected)


def test_annotate_names_a_tensor_without_range():
    before = bind(
        ConvReluConv,
        w1=np.ones((4, 3, 3, 3), F32),
        b1=np.zeros((1, 4, 1, 1), F32),
        w2=np.ones((2, 4, 1, 1), F32),
    )
    with pytest.raises(Exception, match="relu_0"):
        Annotate({"x": (-1.0, 1.0), "conv2d_1": (0.0, 1.0)})(before)
