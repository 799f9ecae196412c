"""FoldToInteger, op by op, bit for bit.

For each op a small float model (an ONNX graph, as users feed them) goes through the whole
pipeline: CanonicalizeForQuantization -> calibrate (min/max, compiled ExposeTensors) ->
Annotate (both schemes) -> FoldToInteger. Then:

1. the program is integer only, with the kernel we expect in the IR;
2. the compiled int8 output equals, bit for bit, (a)
   ``tvm_intq.evaluation.reference.run_reference`` on the same IR and (b) an independent numpy
   computation straight from intmath's equations,
   with parameters recomputed from the calibration ranges and the float weights;
3. the dequantized output is close to the float model (an SQNR bound per op).

The test input is one of the calibration batches: the SQNR bound measures the integer
arithmetic, not how well a few samples predict the range of others.
"""

from __future__ import annotations

import functools
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import tvm
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from tvm_intq.core import intmath
from tvm_intq.core.intmath import QMAX, QMIN, QParams
from tvm_intq.core.metrics import sqnr_db
from tvm_intq.core.schemes import get_scheme
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.relay_passes import (
    Annotate,
    CanonicalizeForQuantization,
    ExposeTensors,
    FoldToInteger,
    analyze,
    float_ops,
)
from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required"),
]

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
SCHEMES = ("hybrid-asym", "symmetric")
IMG = (2, 4, 6, 6)  # N, C, H, W of the image cases
F32 = np.float32


# ---------------------------------------------------------------------------------------------
# Building, calibrating, quantizing
# ---------------------------------------------------------------------------------------------
def onnx_module(nodes, in_shape, inits=(), opset=17) -> tvm.IRModule:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, F32), k) for k, v in inits.items()],
    )
    return from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def compile_vm(mod):
    return relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())


def run_vm(vm, x) -> list:
    """main's outputs as numpy arrays (one, or the fields of a returned tuple)."""
    out = vm["main"](tvm.runtime.tensor(x))
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


@dataclass
class Case:
    """A float model and what to expect of it (its independent computation is in EXPECTED)."""

    nodes: list
    inits: dict = field(default_factory=dict)
    in_shape: tuple = IMG
    sqnr: float = 30.0  # dB, dequantized int8 output vs float model
    kind: str = "conv"  # which IR check applies
    scale: float = 1.0  # input amplitude


@dataclass
class Prepared:
    canonical: tvm.IRModule
    points: list
    ranges: dict
    x: np.ndarray  # test input (the first calibration batch)
    y_float: np.ndarray


@dataclass
class Quantized:
    scheme: str
    qdq: tvm.IRModule
    imod: tvm.IRModule
    int8_name: str
    compiled: list  # [dequantized output, int8 output]
    reference: tuple

    def qp(self, ranges, name) -> QParams:
        """Parameters of tensor ``name`` recomputed from its range, with the scale stored as the
        IR stores it (float32) and FoldToInteger reads it back."""
        p = get_scheme(self.scheme).activation(*ranges[name])
        return QParams(float(F32(p.scale)), p.zero_point)


@functools.cache
def prepared(name) -> Prepared:
    case = CASES[name]
    mod = CanonicalizeForQuantization()(onnx_module(case.nodes, case.in_shape, case.inits))
    points = [v.name for v in analyze(mod["main"]).points]
    vm = compile_vm(ExposeTensors(points)(mod))
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    batches = [(case.scale * rng.normal(size=case.in_shape)).astype(F32) for _ in range(3)]
    ranges, y_float = {}, None
    for x in batches:
        out = run_vm(vm, x)
        y_float = out[0] if y_float is None else y_float
        for p, t in zip(points, out[1:]):
            lo, hi = ranges.get(p, (np.inf, -np.inf))
            ranges[p] = (min(lo, float(t.min())), max(hi, float(t.max())))
    return Prepared(mod, points, ranges, batches[0], y_float)


def output_int8_name(imod) -> str:
    """The int8 tensor that main's final dequantize reads."""
    func = imod["main"]
    values = {b.var: b.value for blk in func.body.blocks for b in blk.bindings}
    ret = func.body.body
    while isinstance(values.get(ret), relax.Var):
        ret = values[ret]
    deq = values[ret]
    assert op_name(deq) == "relax.dequantize", op_name(deq)
    return deq.args[0].name


@functools.cache
def quantized(name, scheme) -> Quantized:
    p = prepared(name)
    qdq = Annotate(p.ranges, scheme)(p.canonical)
    imod = FoldToInteger()(qdq)
    int8_name = output_int8_name(imod)
    exposed = ExposeTensors([int8_name])(imod)
    compiled = run_vm(compile_vm(exposed), p.x)
    reference = run_reference(exposed, {"x": p.x})
    return Quantized(scheme, qdq, imod, int8_name, compiled, reference)


def ops_of(mod) -> Counter:
    return Counter(
        op_name(b.value)
        for blk in mod["main"].body.blocks
        for b in blk.bindings
        if op_name(b.value)
    )


def requantizes(imod) -> int:
    """Requantizes in the program: ``intq.requantize`` (a layer's) and the shift of an add's."""
    ops = ops_of(imod)
    return ops["intq.requantize"] + ops["relax.right_shift"]


def calls_of(mod, name):
    return [
        b.value for blk in mod["main"].body.blocks for b in blk.bindings if op_name(b.value) == name
    ]


# ---------------------------------------------------------------------------------------------
# Independent numpy: the integer layers straight from intmath's equations
# ---------------------------------------------------------------------------------------------
def quantize_input(x, p: QParams):
    """relax.quantize as TVM lowers it: round-half-even(x / s) + zp in float32, saturated."""
    q = np.rint(x.astype(F32) / F32(p.scale)) + F32(p.zero_point)
    return np.clip(q, QMIN, QMAX).astype(np.int8)


def dequantize_output(q, p: QParams):
    return (q.astype(np.int32) - p.zero_point).astype(F32) * F32(p.scale)


def weights(w, axis=0):
    """Eq. 22 per output channel; the scales as the IR stores them (float32)."""
    qw, sw = intmath.weight_qparams(np.asarray(w, F32), axis)
    return qw, sw.astype(F32).astype(np.float64)


def conv_acc(q, qw, zp_in, stride=(1, 1), pads=(0, 0, 0, 0), groups=1, dilation=(1, 1)):
    """int8 conv with int64 accumulation; the input is padded with its zero point (real 0).
    ``pads`` is (top, left, bottom, right), as in ONNX and Relax."""
    top, left, bottom, right = pads
    qp = np.pad(
        q.astype(np.int64), [(0, 0), (0, 0), (top, bottom), (left, right)], constant_values=zp_in
    )
    (kh, kw), (dh, dw), (sh, sw) = qw.shape[2:], dilation, stride
    win = sliding_window_view(qp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    n, c, oh, ow = win.shape[:4]
    o = qw.shape[0]
    win = win.reshape(n, groups, c // groups, oh, ow, kh, kw)
    w = qw.astype(np.int64).reshape(groups, o // groups, c // groups, kh, kw)
    return np.einsum("ngchwij,gocij->ngohw", win, w).reshape(n, o, oh, ow)


def conv_layer(q, pin: QParams, w, b, out: QParams, lo_real=-np.inf, hi_real=np.inf, **geometry):
    qw, sw = weights(w)
    lo, hi = intmath.relu_bounds(out, lo_real, hi_real)
    rq = intmath.conv_requant(
        pin.scale,
        pin.zero_point,
        sw,
        qw,
        0,
        None if b is None else np.asarray(b, F32).astype(np.float64),
        out,
        lo,
        hi,
    )
    return rq.apply(conv_acc(q, qw, pin.zero_point, **geometry))


def pool_windows(q, k, stride, pads, fill):
    """The pooling windows of an N, C, spatial... tensor, as trailing axes; ``pads`` is ONNX's
    ``[begin_1..begin_n, end_1..end_n]``, filled with ``fill``."""
    n = len(k)
    qp = np.pad(
        q.astype(np.int64), [(0, 0), (0, 0)] + list(zip(pads[:n], pads[n:])), constant_values=fill
    )
    win = sliding_window_view(qp, k, axis=tuple(range(2, 2 + n)))
    return win[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in stride)]


def window_counts(shape, k, stride, pads):
    """How many real (unpadded) inputs each window holds: count_include_pad=0's divisor."""
    ones = np.ones((1, 1) + tuple(shape))
    return pool_windows(ones, k, stride, pads, 0).sum(axis=tuple(range(-len(k), 0)))[0, 0]


# Each EXPECTED entry maps (x, Quantized, ranges, Case) -> the int8 output, without reading the
# integer IR. ``ranges`` lists the quantization points in program order: input first, output last.
def _last(ranges):
    return list(ranges)[-1]


def _conv(lo_real=-np.inf, hi_real=np.inf, pads=(1, 1, 1, 1), **geometry):
    def f(x, qz, r, c):
        pin, out = qz.qp(r, "x"), qz.qp(r, _last(r))
        return conv_layer(
            quantize_input(x, pin),
            pin,
            c.inits["W"],
            c.inits.get("B"),
            out,
            lo_real,
            hi_real,
            pads=pads,
            **geometry,
        )

    return f


def dense_layer(q, pin: QParams, w, b, out: QParams):
    qw, sw = weights(w, 0)  # Gemm transB=1: W is (N, K)
    acc = q.astype(np.int64) @ qw.T.astype(np.int64)
    rq = intmath.conv_requant(
        pin.scale,
        pin.zero_point,
        sw,
        qw.T,
        1,
        np.asarray(b, F32).astype(np.float64),
        out,
        acc_shape_axis=1,
        acc_ndim=2,
    )
    return rq.apply(acc)


def _dense(x, qz, r, c):
    pin, out = qz.qp(r, "x"), qz.qp(r, _last(r))
    return dense_layer(quantize_input(x, pin), pin, c.inits["W"], c.inits["B"], out)


def _data_movement_then_dense(x, qz, r, c):
    """max pool (pad -128) -> nearest resize x2 (asymmetric, floor) -> flatten, all on the
    int8 codes with the input's parameters, then the dense layer."""
    pin, out = qz.qp(r, "x"), qz.qp(r, _last(r))
    q = pool_windows(quantize_input(x, pin), (3, 3), (2, 2), (1,) * 4, QMIN).max(axis=(-1, -2))
    q = np.repeat(np.repeat(q, 2, axis=2), 2, axis=3)  # out index o reads o * in / out = o // 2
    return dense_layer(q.reshape(len(q), -1), pin, c.inits["W"], c.inits["B"], out)


def _residual(x, qz, r, c):
    names = list(r)  # x, conv output (+bias), add+relu output
    px, pc, out = (qz.qp(r, n) for n in names)
    qx = quantize_input(x, px)
    qc = conv_layer(qx, px, c.inits["W"], c.inits["B"], pc, pads=(1, 1, 1, 1))
    lo, hi = intmath.relu_bounds(out)
    return intmath.add_requant(pc, px, out, lo, hi).apply(qc, qx)


def _concat(x, qz, r, c):
    px, p1, p2, cat, out = (qz.qp(r, n) for n in r)
    qx = quantize_input(x, px)
    parts = [
        conv_layer(qx, px, c.inits[w], c.inits[b], p, pads=(1, 1, 1, 1))
        for w, b, p in (("W1", "B1", p1), ("W2", "B2", p2))
    ]
    parts = [
        q if p == cat else intmath.rescale_requant(p.scale, p.zero_point, cat).apply(q)
        for q, p in zip(parts, (p1, p2))
    ]
    table = intmath.lut(lambda v: np.maximum(v, 0.0), cat, out)
    return intmath.apply_lut(np.concatenate(parts, axis=1), table, None)


def _maxpool(x, qz, r, c):
    q = quantize_input(x, qz.qp(r, "x"))  # max commutes with the monotone dequantize
    return pool_windows(q, (2, 2), (2, 2), (0,) * 4, QMIN).max(axis=(-1, -2)).astype(np.int8)


def _avgpool(k, stride, pads, include_pad):
    def f(x, qz, r, c):
        pin, out = qz.qp(r, "x"), qz.qp(r, _last(r))
        q = quantize_input(x, pin)
        axes = tuple(range(-len(k), 0))
        sums = pool_windows(q, k, stride, pads, pin.zero_point).sum(axis=axes)
        count = int(np.prod(k))
        divisor = count if include_pad else window_counts(q.shape[2:], k, stride, pads)
        rq = intmath.rescale_requant(pin.scale, pin.zero_point, out, count=count, divisor=divisor)
        return rq.apply(sums)

    return f


def _product_of_two_activations(x, qz, r, c):
    """conv(x) * x: ``(Qc - zc) * (Qx - zx)`` requantized once in int32 (Eq. 6, one term)."""
    px, pc, out = (qz.qp(r, n) for n in r)
    qx = quantize_input(x, px)
    qc = conv_layer(qx, px, c.inits["W"], c.inits["B"], pc, pads=(1, 1, 1, 1))
    product = (qc.astype(np.int64) - pc.zero_point) * (qx.astype(np.int64) - px.zero_point)
    return intmath.product_requant(pc, px, out).apply(product)


def _gap(x, qz, r, c):
    pin, out = qz.qp(r, "x"), qz.qp(r, _last(r))
    sums = quantize_input(x, pin).astype(np.int64).sum(axis=(2, 3), keepdims=True)
    return intmath.rescale_requant(pin.scale, pin.zero_point, out, count=36).apply(sums)


def _softmax(x, qz, r, c):
    pin, out = qz.qp(r, "x"), qz.qp(r, _last(r))
    return intmath.softmax_int(pin, out).apply(quantize_input(x, pin), axis=1)


def _lut(fn, per_channel=False):
    def f(x, qz, r, c):
        pin, out = qz.qp(r, "x"), qz.qp(r, _last(r))
        table = intmath.lut(fn(c) if per_channel else fn, pin, out)
        return intmath.apply_lut(quantize_input(x, pin), table, 1 if per_channel else None)

    return f


def _bn_affine(c):
    """ONNX BatchNormalization (inference) as DecomposeOpsForInference writes it, with the
    float32 constants FoldConstant computes: ((x - mean) / sqrt(var + eps)) * gamma + beta."""
    g, b, m, v = (np.asarray(c.inits[k], F32) for k in ("g", "b", "m", "v"))
    d = np.sqrt(v + F32(1e-5))  # float32, like the folded constant
    g, b, m, d = (t.astype(np.float64) for t in (g, b, m, d))
    return lambda r: ((r[:, None] - m) / d) * g + b  # (256, C): one table per channel


def _prelu(c):
    a = np.asarray(c.inits["a"], F32).astype(np.float64).reshape(-1)
    return lambda r: np.where(r[:, None] >= 0, r[:, None], a * r[:, None])


def _split_conv(x, qz, r, c):
    """conv -> the second half of its channels, sliced as int8 codes -> 1x1 conv."""
    px, pc, out = (qz.qp(r, n) for n in r)
    qx = quantize_input(x, px)
    qc = conv_layer(qx, px, c.inits["W"], c.inits["B"], pc, pads=(1, 1, 1, 1))
    return conv_layer(qc[:, 3:], pc, c.inits["W2"], c.inits["B2"], out)


RNG = np.random.default_rng(7)


def _w(*shape, amp=0.3):
    return (amp * RNG.normal(size=shape)).astype(F32)


def conv_node(w="W", b="B", out="y", **attrs):
    return helper.make_node("Conv", ["x", w] + ([b] if b else []), [out], **attrs)


CASES = {
    "conv_s1": Case([conv_node(pads=[1, 1, 1, 1])], {"W": _w(6, 4, 3, 3), "B": _w(6, amp=1)}),
    "conv_s2": Case(
        [conv_node(pads=[1, 1, 1, 1], strides=[2, 2])], {"W": _w(6, 4, 3, 3), "B": _w(6, amp=1)}
    ),
    "conv_asym_pad_dilation": Case(
        [conv_node(pads=[0, 1, 2, 0], strides=[1, 2], dilations=[2, 1])],
        {"W": _w(6, 4, 3, 3), "B": _w(6, amp=1)},
    ),
    "depthwise": Case(
        [conv_node(pads=[1, 1, 1, 1], group=4)], {"W": _w(4, 1, 3, 3), "B": _w(4, amp=1)}
    ),
    "grouped": Case(
        [conv_node(pads=[1, 1, 1, 1], group=2)],
        {"W": _w(6, 2, 3, 3), "B": _w(6, amp=1)},
        kind="grouped",
    ),
    "conv_relu": Case(
        [conv_node(out="c", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        {"W": _w(6, 4, 3, 3), "B": _w(6, amp=1)},
    ),
    "conv_relu6": Case(
        [conv_node(out="c", pads=[1, 1, 1, 1]), helper.make_node("Clip", ["c", "lo", "hi"], ["y"])],
        {"W": _w(6, 4, 3, 3, amp=1.5), "B": _w(6, amp=1), "lo": F32(0), "hi": F32(6)},
    ),
    "gemm": Case(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)],
        {"W": _w(10, 16), "B": _w(10, amp=1)},
        in_shape=(3, 16),
        kind="dense",
    ),
    "pool_resize_flatten_gemm": Case(
        [
            helper.make_node(
                "MaxPool", ["x"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]
            ),
            helper.make_node(
                "Resize",
                ["m", "", "sc"],
                ["r"],
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            ),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1),
        ],
        {"sc": np.array([1, 1, 2, 2], F32), "W": _w(5, 4 * 6 * 6, amp=0.1), "B": _w(5, amp=1)},
        kind="data_movement",
    ),
    "residual_add_relu": Case(
        [
            conv_node(out="c", pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c", "x"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        {"W": _w(4, 4, 3, 3), "B": _w(4, amp=1)},
        kind="add",
    ),
    "concat": Case(
        [
            conv_node("W1", "B1", "c1", pads=[1, 1, 1, 1]),
            conv_node("W2", "B2", "c2", pads=[1, 1, 1, 1]),
            helper.make_node("Concat", ["c1", "c2"], ["cat"], axis=1),
            # something integer reads the concat (a concat on the way to the output keeps its
            # parts' scales instead: test_detection_head.py)
            helper.make_node("Relu", ["cat"], ["y"]),
        ],
        {
            "W1": _w(3, 4, 3, 3, amp=0.05),
            "B1": _w(3, amp=0.1),
            "W2": _w(5, 4, 3, 3, amp=1.0),
            "B2": _w(5, amp=1),
        },
        kind="concat",
    ),
    "maxpool": Case(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        kind="maxpool",
    ),
    "avgpool3d_exclude_pad": Case(
        [
            helper.make_node(
                "AveragePool",
                ["x"],
                ["y"],
                kernel_shape=[2, 3, 3],
                strides=[2, 1, 2],
                pads=[0, 1, 1, 1, 0, 1],
                count_include_pad=0,
            )
        ],
        in_shape=(1, 2, 4, 6, 6),
        kind="avgpool",
    ),
    "avgpool_count_include_pad": Case(
        [
            helper.make_node(
                "AveragePool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                count_include_pad=1,
            )
        ],
        kind="avgpool",
    ),
    "avgpool_exclude_pad": Case(
        [
            helper.make_node(
                "AveragePool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                count_include_pad=0,
            )
        ],
        kind="avgpool",
    ),
    "global_avgpool": Case([helper.make_node("GlobalAveragePool", ["x"], ["y"])], kind="gap"),
    "product_of_two_activations": Case(
        [conv_node(out="c", pads=[1, 1, 1, 1]), helper.make_node("Mul", ["c", "x"], ["y"])],
        {"W": _w(4, 4, 3, 3), "B": _w(4, amp=1)},
        kind="product",
    ),
    "softmax": Case(
        [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
        in_shape=(4, 10),
        kind="softmax",
        scale=3.0,
    ),
    "sigmoid": Case([helper.make_node("Sigmoid", ["x"], ["y"])], kind="lut", sqnr=25, scale=3.0),
    "tanh": Case([helper.make_node("Tanh", ["x"], ["y"])], kind="lut", sqnr=25, scale=2.0),
    "leaky_relu": Case(
        [helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)], kind="lut", sqnr=25
    ),
    "hardsigmoid": Case(
        [helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.2, beta=0.5)],
        kind="lut",
        sqnr=25,
        scale=3.0,
    ),
    "hardswish": Case(
        [helper.make_node("HardSwish", ["x"], ["y"])], kind="lut", sqnr=25, scale=3.0
    ),
    "silu": Case(
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
        kind="lut",
        sqnr=25,
        scale=3.0,
    ),
    "batchnorm_affine": Case(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
        {
            "g": RNG.uniform(0.5, 2, 4),
            "b": RNG.normal(size=4),
            "m": 0.3 * RNG.normal(size=4),
            "v": RNG.uniform(0.5, 2, 4),
        },
        kind="lut_channel",
        sqnr=25,
    ),
    # YOLO's C2f: a conv's output split in two, a conv on one half (SplitToSlices)
    "split_conv": Case(
        [
            conv_node(out="c", pads=[1, 1, 1, 1]),
            helper.make_node("Split", ["c"], ["a", "b"], axis=1),
            helper.make_node("Conv", ["b", "W2", "B2"], ["y"]),
        ],
        {"W": _w(6, 4, 3, 3), "B": _w(6, amp=1), "W2": _w(5, 3, 1, 1, amp=0.6), "B2": _w(5)},
        kind="split_conv",
    ),
    # a slope per channel (DecomposePRelu: max(x, 0) + a * min(x, 0), one table per channel)
    "prelu": Case(
        [helper.make_node("PRelu", ["x", "a"], ["y"])],
        {"a": RNG.uniform(0.05, 0.5, (4, 1, 1))},
        kind="lut_channel",
        sqnr=25,
    ),
}

EXPECTED = {
    "conv_s1": _conv(),
    "conv_s2": _conv(stride=(2, 2)),
    "conv_asym_pad_dilation": _conv(pads=(0, 1, 2, 0), stride=(1, 2), dilation=(2, 1)),
    "pool_resize_flatten_gemm": _data_movement_then_dense,
    "depthwise": _conv(groups=4),
    "grouped": _conv(groups=2),
    "conv_relu": _conv(lo_real=0.0),
    "conv_relu6": _conv(lo_real=0.0, hi_real=6.0),
    "gemm": _dense,
    "residual_add_relu": _residual,
    "concat": _concat,
    "maxpool": _maxpool,
    "avgpool_count_include_pad": _avgpool((3, 3), (2, 2), (1,) * 4, True),
    "avgpool_exclude_pad": _avgpool((3, 3), (2, 2), (1,) * 4, False),
    "avgpool3d_exclude_pad": _avgpool((2, 3, 3), (2, 1, 2), (0, 1, 1, 1, 0, 1), False),
    "product_of_two_activations": _product_of_two_activations,
    "global_avgpool": _gap,
    "softmax": _softmax,
    "sigmoid": _lut(intmath.sigmoid),
    "tanh": _lut(np.tanh),
    "leaky_relu": _lut(lambda r: np.where(r >= 0, r, 0.1 * r)),
    "hardsigmoid": _lut(lambda r: np.clip(0.2 * r + 0.5, 0.0, 1.0)),
    "hardswish": _lut(lambda r: r * np.clip(r + 3.0, 0.0, 6.0) / 6.0),
    "silu": _lut(lambda r: r * intmath.sigmoid(r)),
    "batchnorm_affine": _lut(_bn_affine, per_channel=True),
    "split_conv": _split_conv,
    "prelu": _lut(_prelu, per_channel=True),
}

PARAMS = [pytest.param(n, s, id=f"{n}-{s}") for n in CASES for s in SCHEMES]


# ---------------------------------------------------------------------------------------------
# 1. integer only, with the expected kernels
# ---------------------------------------------------------------------------------------------
def check_convs(imod, n_conv):
    """``n_conv`` int8 x int8 -> int32 conv2d, without padding of their own (the input is padded
    with its zero point by nn.pad, so that the zero-point correction in ADD is exact)."""
    convs = calls_of(imod, "relax.nn.conv2d")
    assert len(convs) == n_conv
    for c in convs:
        assert str(c.args[0].ty.dtype) == "int8" and str(c.args[1].ty.dtype) == "int8"
        assert str(c.attrs.out_dtype) == "int32" and str(c.ty.dtype) == "int32"
        assert [int(p) for p in c.attrs.padding] == [0, 0, 0, 0]


def check_conv_ir(imod):
    check_convs(imod, 1)
    assert requantizes(imod) == 1  # one requantize: (acc*MUL + ADD) >> S


def check_grouped_ir(imod):
    """A grouped (not depthwise) conv: one conv per group over its 2 of the 4 input channels,
    each requantized, their int8 results concatenated (convs the packed kernels take)."""
    check_convs(imod, 2)
    for c in calls_of(imod, "relax.nn.conv2d"):
        assert int(c.attrs.groups) == 1 and int(c.args[0].ty.shape[1]) == 2
    assert requantizes(imod) == 2
    (concat,) = calls_of(imod, "relax.concat")
    assert str(concat.ty.dtype) == "int8"


def check_dense_ir(imod):
    mm = calls_of(imod, "relax.matmul")
    assert [(str(c.args[0].ty.dtype), str(c.args[1].ty.dtype), str(c.ty.dtype)) for c in mm] == [
        ("int8", "int8", "int32")
    ]
    assert requantizes(imod) == 1


def check_data_movement_ir(imod):
    """max pool, resize and reshape move int8 codes; only the dense layer computes."""
    for op in ("relax.nn.max_pool2d", "relax.image.resize2d", "relax.reshape"):
        (call,) = calls_of(imod, op)
        assert str(call.args[0].ty.dtype) == str(call.ty.dtype) == "int8", op
    check_dense_ir(imod)


def check_add_ir(imod):
    check_convs(imod, 1)
    assert requantizes(imod) == 2  # the conv's requantize, then the add's
    # the add's arithmetic in int32 (intmath.narrow_add_requant)
    (shift,) = calls_of(imod, "relax.right_shift")
    assert str(shift.ty.dtype) == "int32"


def check_concat_ir(imod):
    check_convs(imod, 2)
    # each conv's requantize, plus a rescale for each branch whose parameters differ from the
    # concat's (the branches' scales differ by ~20x, so at least one)
    assert requantizes(imod) in (3, 4)
    (cat,) = calls_of(imod, "relax.concat")
    assert str(cat.ty.dtype) == "int8"


def check_split_conv_ir(imod):
    check_convs(imod, 2)
    assert requantizes(imod) == 2 and "relax.split" not in ops_of(imod)
    (part,) = calls_of(imod, "relax.strided_slice")
    assert str(part.args[0].ty.dtype) == str(part.ty.dtype) == "int8"


def check_maxpool_ir(imod):
    assert [str(c.args[0].ty.dtype) for c in calls_of(imod, "relax.nn.max_pool2d")] == ["int8"]


def check_avgpool_ir(imod):
    # window sums as avg_pool(k * x) over an explicitly zp-padded int32 input, one requantize
    (pool,) = calls_of(imod, "relax.nn.avg_pool2d") + calls_of(imod, "relax.nn.avg_pool3d")
    assert str(pool.ty.dtype) == "int32" and not any(int(p) for p in pool.attrs.padding)
    assert requantizes(imod) == 1


def check_product_ir(imod):
    check_convs(imod, 1)
    ops = ops_of(imod)
    assert "relax.take" not in ops and requantizes(imod) == 2, ops
    assert {str(m.ty.dtype) for m in calls_of(imod, "relax.multiply")} == {"int32"}


def check_gap_ir(imod):
    ops = ops_of(imod)
    assert ops["relax.sum"] == 1 and requantizes(imod) == 1 and "relax.mean" not in ops


def check_softmax_ir(imod):
    ops = ops_of(imod)
    assert ops["relax.take"] == 1 and ops["relax.floor_divide"] == 1
    assert not {"relax.nn.softmax", "relax.exp", "relax.divide"} & set(ops)


def check_lut_ir(imod, channels=None):
    ops = ops_of(imod)
    assert ops["relax.take"] == 1, ops
    assert not {
        "relax.sigmoid",
        "relax.tanh",
        "relax.nn.leakyrelu",
        "relax.clip",
        "relax.multiply",
        "relax.divide",
        "relax.subtract",
    } & set(ops), ops
    table = const_value(calls_of(imod, "relax.take")[0].args[0])
    assert table.dtype == np.int8 and table.shape == (256 * (channels or 1),)


IR_CHECKS = {
    "conv": check_conv_ir,
    "dense": check_dense_ir,
    "add": check_add_ir,
    "data_movement": check_data_movement_ir,
    "product": check_product_ir,
    "concat": check_concat_ir,
    "maxpool": check_maxpool_ir,
    "avgpool": check_avgpool_ir,
    "gap": check_gap_ir,
    "softmax": check_softmax_ir,
    "lut": check_lut_ir,
    "lut_channel": functools.partial(check_lut_ir, channels=4),
    "split_conv": check_split_conv_ir,
    "grouped": check_grouped_ir,
}


@pytest.mark.parametrize("name,scheme", PARAMS)
def test_integer_only_with_expected_kernels(name, scheme):
    qz = quantized(name, scheme)
    assert float_ops(qz.imod) == []
    assert ops_of(qz.imod)["relax.quantize"] == 1 and ops_of(qz.imod)["relax.dequantize"] == 1
    IR_CHECKS[CASES[name].kind](qz.imod)


# ---------------------------------------------------------------------------------------------
# 2. bit for bit: compiled == reference == intmath
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,scheme", PARAMS)
def test_compiled_equals_reference_bit_for_bit(name, scheme):
    qz = quantized(name, scheme)
    y_deq, y_int8 = qz.compiled
    ref_deq, ref_int8 = qz.reference
    assert y_int8.dtype == ref_int8.dtype == np.int8
    np.testing.assert_array_equal(y_int8, ref_int8)
    np.testing.assert_array_equal(y_deq, ref_deq)  # the float32 dequantize, too


@pytest.mark.parametrize("name,scheme", PARAMS)
def test_compiled_equals_intmath_equations_bit_for_bit(name, scheme):
    p, qz = prepared(name), quantized(name, scheme)
    want = EXPECTED[name](p.x, qz, p.ranges, CASES[name])
    y_deq, y_int8 = qz.compiled
    assert want.dtype == np.int8 and want.shape == y_int8.shape
    np.testing.assert_array_equal(y_int8, want)
    out = qz.qp(p.ranges, _last(p.ranges))
    np.testing.assert_array_equal(y_deq, dequantize_output(want, out))


@pytest.mark.parametrize("name,scheme", PARAMS)
def test_annotated_parameters_are_the_schemes(name, scheme):
    """Every quantize in the QDQ graph carries scheme.activation(range), as float32."""
    p, qz = prepared(name), quantized(name, scheme)
    seen = {}
    for blk in qz.qdq["main"].body.blocks:
        for b in blk.bindings:
            if op_name(b.value) == "relax.quantize":
                seen[b.var.name] = QParams(
                    float(const_value(b.value.args[1])), int(const_value(b.value.args[2]))
                )
    assert seen == {f"{t}_q": qz.qp(p.ranges, t) for t in p.points}


# ---------------------------------------------------------------------------------------------
# 3. close to the float model
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,scheme", PARAMS)
def test_dequantized_output_close_to_float(name, scheme):
    p, qz = prepared(name), quantized(name, scheme)
    assert sqnr_db(p.y_float, qz.compiled[0]) >= CASES[name].sqnr


# ---------------------------------------------------------------------------------------------
# Fusion: conv + requantize + clip + cast is one kernel
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["conv_relu", "gemm"])
def test_layer_and_requantize_fuse_into_one_kernel(name):
    imod = quantized(name, "hybrid-asym").imod
    built = relax.get_pipeline("zero")(imod)
    prims = {
        gv.name_hint: f for gv, f in built.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    }
    layer = "conv2d" if name == "conv_relu" else "matmul"
    with_layer = [n for n in prims if layer in n]
    assert len(with_layer) == 1, sorted(prims)
    for part in ("multiply", "add", "right_shift", "clip", "cast"):
        assert part in with_layer[0], with_layer[0]
    # No int32 accumulator or int64 intermediate leaves the kernel.
    for blk in built["main"].body.blocks:
        for b in blk.bindings:
            assert str(b.var.ty.dtype) not in ("int32", "int64"), b.var.name


# ---------------------------------------------------------------------------------------------
# Known bugs
# ---------------------------------------------------------------------------------------------
def _pipeline_on(nodes, inits, in_shape=IMG, scheme="hybrid-asym"):
    mod = CanonicalizeForQuantization()(onnx_module(nodes, in_shape, inits))
    points = [v.name for v in analyze(mod["main"]).points]
    vm = compile_vm(ExposeTensors(points)(mod))
    x = np.random.default_rng(3).normal(size=in_shape).astype(F32)
    out = run_vm(vm, x)
    ranges = {n: (float(t.min()), float(t.max())) for n, t in zip(points, out[1:])}
    qdq = Annotate(ranges, scheme)(mod)
    imod = FoldToInteger()(qdq)
    return x, out[0], run_vm(compile_vm(qdq), x)[0], run_vm(compile_vm(imod), x)[0], imod


def test_subtract_of_two_activations_hybrid_asym():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["r", "x"], ["y"])]
    x, y_float, y_qdq, y_int, imod = _pipeline_on(nodes, {})
    assert float_ops(imod) == []
    assert sqnr_db(y_float, y_qdq) >= 30  # the QDQ model is fine ...
    np.testing.assert_allclose(y_int, y_qdq, atol=0.02)  # ... the integer program is not


def test_subtract_of_two_activations_symmetric():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sub", ["r", "x"], ["y"])]
    x, y_float, y_qdq, y_int, imod = _pipeline_on(nodes, {}, scheme="symmetric")
    assert float_ops(imod) == [] and sqnr_db(y_float, y_int) >= 30


def test_conv_plus_constant_along_width_is_not_a_bias():
    w = _w(4, 4, 3, 3)
    nodes = [
        conv_node(b=None, out="c", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "k"], ["y"]),
    ]
    x, y_float, y_qdq, y_int, imod = _pipeline_on(
        nodes, {"W": w, "k": _w(4, amp=2)}, in_shape=(1, 4, 6, 4)
    )
    assert sqnr_db(y_float, y_qdq) >= 30
    assert sqnr_db(y_float, y_int) >= 30


@pytest.mark.parametrize("scheme", SCHEMES)
def test_matmul_of_two_activations_is_integer(scheme):
    """Attention (PP-OCRv4 rec's SVTR blocks): softmax(Q.K^T).V with Q, K, V activations. Both
    products are int32 matmuls of zero-point-shifted int8 codes with one requantize each,
    bit-exact with the reference."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("MatMul", ["x", "Wq"], ["q"]),
        helper.make_node("MatMul", ["x", "Wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["a"], axis=-1),
        helper.make_node("MatMul", ["a", "x"], ["y"]),
    ]
    inits = {"Wq": rng.normal(size=(8, 8)) / 3, "Wk": rng.normal(size=(8, 8)) / 3}
    x, y_float, y_qdq, y_int, imod = _pipeline_on(nodes, inits, in_shape=(2, 6, 8), scheme=scheme)
    assert float_ops(imod) == []
    products = [c for c in calls_of(imod, "relax.matmul") if const_value(c.args[1]) is None]
    assert len(products) == 2 and all(str(c.ty.dtype) == "int32" for c in products)
    np.testing.assert_array_equal(y_int, run_reference(imod, {"x": x}))
    assert sqnr_db(y_float, y_int) >= 25


@pytest.mark.parametrize("scheme", SCHEMES)
def test_conv_transpose_is_integer(scheme):
    """ConvTranspose + bias + ReLU (PP-OCRv4 det's upsampling head): one int32
    conv2d_transpose of zero-point-shifted codes and one requantize, bit-exact with the
    reference (which computes it independently, tap by tap)."""
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node(
            "ConvTranspose",
            ["x", "W", "B"],
            ["c"],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 1],
        ),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    inits = {"W": rng.normal(size=(4, 3, 3, 3)) / 4, "B": rng.normal(size=3) / 4}
    x, y_float, y_qdq, y_int, imod = _pipeline_on(
        nodes, inits, in_shape=(1, 4, 5, 5), scheme=scheme
    )
    assert float_ops(imod) == [] and y_int.shape == (1, 3, 10, 10)
    (ct,) = calls_of(imod, "relax.nn.conv2d_transpose")
    assert str(ct.ty.dtype) == "int32" and requantizes(imod) == 1
    np.testing.assert_array_equal(y_int, run_reference(imod, {"x": x}))
    assert sqnr_db(y_float, y_int) >= 30


# ---------------------------------------------------------------------------------------------
# The reference evaluator itself, op by op, against TVM
# ---------------------------------------------------------------------------------------------
RESIZE_MODES = [
    (m, r)
    for m in ("asymmetric", "half_pixel", "align_corners")
    for r in ("", "round", "round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
]
RESIZE_SIZES = [(14, 18), (5, 4), (11, 13)]  # integer upsampling, downsampling, odd ratios


def _reference_op_module():
    """One function applying every op the reference knows to int8/int32/float inputs."""
    from tvm.relax import op as R

    q = relax.Var("q", relax.TensorType((2, 3, 7, 9), "int8"))
    i = relax.Var("i", relax.TensorType((2, 3, 7, 9), "int32"))
    f = relax.Var("f", relax.TensorType((4, 6), "float32"))
    bb = relax.BlockBuilder()
    named = []
    with bb.function("main", [q, i, f]):
        with bb.dataflow():

            def emit(name, expr):
                named.append(name)
                return bb.emit(expr)

            outs = []
            for mode, rounding in RESIZE_MODES:
                for size in RESIZE_SIZES:
                    outs.append(
                        emit(
                            f"resize2d[{mode},{rounding or 'default'},{size}]",
                            R.image.resize2d(
                                q,
                                size,
                                method="nearest_neighbor",
                                coordinate_transformation_mode=mode,
                                rounding_method=rounding,
                            ),
                        )
                    )
            w = relax.const(RNG.integers(-127, 128, size=(6, 1, 3, 2)).astype(np.int8))
            outs += [
                emit("max_pool2d[pad,stride]", R.nn.max_pool2d(q, (3, 3), (2, 2), (1, 1, 1, 1))),
                emit(
                    "max_pool2d[dilation]", R.nn.max_pool2d(q, (2, 2), (1, 1), (0, 1, 1, 0), (2, 2))
                ),
                emit(
                    "avg_pool2d[int32,trunc]",
                    R.nn.avg_pool2d(i, (2, 3), (1, 2), (1, 0, 1, 1), count_include_pad=True),
                ),
                # channels last, as the TFLite frontend imports pools
                emit(
                    "max_pool2d[NHWC]",
                    R.nn.max_pool2d(q, (2, 2), (2, 1), (1, 0, 0, 1), layout="NHWC"),
                ),
                emit(
                    "avg_pool2d[NHWC]",
                    R.nn.avg_pool2d(
                        i, (2, 2), (1, 2), (0, 1, 1, 0), layout="NHWC", count_include_pad=True
                    ),
                ),
                emit(
                    "conv2d[groups,stride,dilation,pad]",
                    R.nn.conv2d(
                        q,
                        w,
                        strides=(2, 1),
                        padding=(1, 2, 0, 1),
                        dilation=(2, 1),
                        groups=3,
                        out_dtype="int32",
                    ),
                ),
                emit(
                    "matmul[int8->int32]",
                    R.matmul(
                        R.reshape(q, (2, 3, 63)),
                        R.permute_dims(R.reshape(q, (6, 63))),
                        out_dtype="int32",
                    ),
                ),
                emit("strided_slice", R.strided_slice(q, [1, 3], [1, 2], [3, 9], [1, 3])),
                emit("permute_dims", R.permute_dims(q, [0, 2, 3, 1])),
                emit("flatten", R.flatten(q)),
                emit("squeeze/expand_dims", R.squeeze(R.expand_dims(q, [0, -1]), [0])),
                emit("concat", R.concat([q, q], axis=2)),
                emit(
                    "broadcast_to", R.broadcast_to(R.max(q, axis=[1], keepdims=True), (2, 3, 7, 9))
                ),
                emit(
                    "right_shift[negative]",
                    R.right_shift(R.astype(i, "int64"), relax.const(3, "int64")),
                ),
                emit("floor_divide[negative]", R.floor_divide(i, relax.const(7, "int32"))),
                emit(
                    "multiply/add/subtract",
                    R.subtract(R.add(R.multiply(i, i), i), relax.const(5, "int32")),
                ),
                emit("clip+astype", R.astype(R.clip(i, -100, 100), "int8")),
                emit(
                    "take[clip]",
                    R.take(
                        relax.const(np.arange(256, dtype=np.int32) * 3 - 400),
                        i,
                        axis=0,
                        mode="clip",
                    ),
                ),
                emit("sum", R.sum(R.astype(q, "int32"), axis=[2, 3], keepdims=True)),
                emit("max", R.max(q, axis=[1])),
                emit(
                    "quantize[ties]",
                    R.quantize(
                        f,
                        relax.const(0.5, "float32"),
                        relax.const(3, "int8"),
                        axis=-1,
                        out_dtype="int8",
                    ),
                ),
                emit(
                    "quantize[per-channel]",
                    R.quantize(
                        f,
                        relax.const(np.linspace(0.1, 0.6, 6).astype(F32)),
                        relax.const(np.arange(-3, 3).astype(np.int8)),
                        axis=1,
                        out_dtype="int8",
                    ),
                ),
                emit(
                    "dequantize",
                    R.dequantize(
                        q,
                        relax.const(0.0371, "float32"),
                        relax.const(-7, "int8"),
                        axis=-1,
                        out_dtype="float32",
                    ),
                ),
            ]
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    return bb.get(), named


def test_reference_matches_tvm_on_every_op():
    mod, names = _reference_op_module()
    rng = np.random.default_rng(11)
    q = rng.integers(-128, 128, size=(2, 3, 7, 9)).astype(np.int8)
    i = rng.integers(-300, 300, size=(2, 3, 7, 9)).astype(np.int32)
    f = (rng.integers(-40, 40, size=(4, 6)) * 0.25).astype(F32)  # many exact .5 ties at scale 0.5
    f[0, :3] = [1e6, -1e6, 0.75]  # saturation
    vm = relax.VirtualMachine(tvm.compile(mod, TARGET), tvm.cpu())
    got = [o.numpy() for o in vm["main"](*(tvm.runtime.tensor(a) for a in (q, i, f)))]
    want = run_reference(mod, {"q": q, "i": i, "f": f})
    assert len(want) == len(got) == len(names)
    bad = [n for n, g, w in zip(names, got, want) if g.shape != w.shape or not np.array_equal(g, w)]
    assert bad == []
    # dtypes are the IR's, except where TVM's legalization departs from it: an integer
    # avg_pool2d declared int32 is lowered to an int64 buffer (FoldToInteger casts its result
    # to int64 anyway, so the values are what counts).
    wrong = [(n, g.dtype, w.dtype) for n, g, w in zip(names, got, want) if g.dtype != w.dtype]
    assert wrong == [
        (name, np.dtype("int64"), np.dtype("int32"))
        for name in ("avg_pool2d[int32,trunc]", "avg_pool2d[NHWC]")
    ]


def test_reference_names_an_unknown_op():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            gv = bb.emit_output(relax.op.sigmoid(x))
        bb.emit_func_output(gv)
    with pytest.raises(NotImplementedError, match="relax.sigmoid"):
        run_reference(bb.get(), {"x": np.zeros(3, F32)})
    with pytest.raises(KeyError, match="'x'"):
        run_reference(bb.get(), {})
