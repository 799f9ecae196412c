"""Fold every quantize/dequantize pair of a QDQ graph into integer arithmetic."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.core import intmath
from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name, shape_of
from tvm_intq.relay_passes.analysis.lookup_tables import (
    NUMPY_OPS,
    affine_of,
    build_table,
    region_function,
)
from tvm_intq.relay_passes.analysis.quant_points import CLAMPS, clamp_bounds, is_passthrough
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main
from tvm_intq.relay_passes.ops import integer_kernels as K


def _scalar(expr) -> float | None:
    v = const_value(expr)
    return None if v is None or v.size != 1 else float(v.reshape(()))


class _State:
    """What the rewrite knows about the new program while it walks it."""

    def __init__(self):
        self.defs = {}  # new var -> bound value
        self.dq = {}  # new var -> (int8 var, QParams) for per-tensor dequantize results
        self.weights = {}  # new var -> (Qw int8, sw, axis) of a constant weight's dequantize

    def lookup(self, var):
        value = self.defs.get(var)
        while isinstance(value, relax.Var):
            var, value = value, self.defs.get(value)
        return value

    def resolve(self, var):
        while isinstance(self.defs.get(var), relax.Var):
            var = self.defs[var]
        return var

    def dequantized(self, var):
        return self.dq.get(self.resolve(var)) if isinstance(var, relax.Var) else None


def _qparams(call) -> intmath.QParams | None:
    """Per-tensor int8 parameters of a quantize/dequantize call (None: per-channel or not int8)."""
    scale, zp = _scalar(call.args[1]), _scalar(call.args[2])
    int_side = call.attrs.out_dtype if op_name(call) == "relax.quantize" else call.args[0].ty.dtype
    if scale is None or zp is None or str(int_side) != "int8":
        return None
    return intmath.QParams(scale, int(zp))


def _weight(call):
    """``(Qw, sw, axis)`` of ``dequantize(Qw, sw, 0, axis)`` with a constant int8 ``Qw``
    (``axis`` None for one scale); None for anything else, e.g. a non-zero weight zero point."""
    qw, sw, zp = (const_value(a) for a in call.args)
    if qw is None or sw is None or zp is None or qw.dtype != np.int8 or np.any(zp != 0):
        return None
    if sw.size == 1:
        return qw, float(sw.reshape(())), None
    return qw, sw.astype(np.float64).reshape(-1), int(call.attrs.axis) % qw.ndim


def _fold_linear(bb, st: _State, v, out: intmath.QParams, name: str):
    """conv2d/matmul [+ bias] [relu|clip|max|min]* -> int8 layer with one requantize."""
    lo_real, hi_real, bias, call = -np.inf, np.inf, None, st.lookup(v)
    while op_name(call) in CLAMPS:
        lo, hi = clamp_bounds(call)
        lo_real, hi_real = max(lo_real, lo), min(hi_real, hi)
        call = st.lookup(call.args[0])
    if op_name(call) in ("relax.add", "relax.subtract") and const_value(call.args[1]) is not None:
        bias = const_value(call.args[1]).astype(np.float64)
        bias = -bias if op_name(call) == "relax.subtract" else bias
        call = st.lookup(call.args[0])
    name_op = op_name(call)
    if name_op in ("relax.add", "relax.subtract") and bias is None:
        a, b = st.dequantized(call.args[0]), st.dequantized(call.args[1])
        if a is None or b is None:
            return None
        lo, hi = intmath.relu_bounds(out, lo_real, hi_real)
        ar = intmath.add_requant(a[1], b[1], out, lo, hi, subtract=name_op == "relax.subtract")
        ar = intmath.narrow_add_requant(ar)  # the same output on every code pair
        return K.add(bb, a[0], b[0], ar, name)
    if name_op not in ("relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul"):
        return None
    if name_op == "relax.nn.conv2d" and (
        str(call.attrs.data_layout),
        str(call.attrs.kernel_layout),
        str(call.attrs.out_layout),
    ) != ("NCHW", "OIHW", "NCHW"):
        return None  # the integer kernel is NCHW/OIHW
    x = st.dequantized(call.args[0])
    y = st.dequantized(call.args[1]) if name_op == "relax.matmul" else None
    if x is not None and y is not None and bias is None:  # two activations (attention)
        lo, hi = intmath.relu_bounds(out, lo_real, hi_real)
        rq = intmath.matmul_requant(x[1], y[1], out, shape_of(call.args[0])[-1], lo, hi)
        return K.matmul_activations(bb, x[0], x[1], y[0], y[1], rq, name)
    w = st.weights.get(st.resolve(call.args[1]))
    if x is None or w is None:
        return None
    qw, sw, w_axis = w
    axis = 0 if name_op == "relax.nn.conv2d" else 1  # the weight's output-channel axis (IOHW)
    if w_axis not in (None, axis):  # scales along another axis: not one requantize per channel
        return None
    sw = np.broadcast_to(sw, (qw.shape[axis],))
    lo, hi = intmath.relu_bounds(out, lo_real, hi_real)
    if name_op == "relax.nn.conv2d":
        channels = qw.shape[0]
        b = None if bias is None else np.broadcast_to(bias.reshape(-1), (channels,))
        rq = intmath.conv_requant(
            x[1].scale, x[1].zero_point, sw, qw, 0, b, out, lo, hi, acc_shape_axis=1, acc_ndim=4
        )
        return K.conv2d(bb, x[0], x[1], call.attrs, qw, rq, name)
    if name_op == "relax.nn.conv2d_transpose":
        b = None if bias is None else np.broadcast_to(bias.reshape(-1), (qw.shape[1],))
        # The kernel subtracts zp_in before the product (see K.conv2d_transpose): zp_in 0 here.
        rq = intmath.conv_requant(
            x[1].scale, 0, sw, qw, 1, b, out, lo, hi, acc_shape_axis=1, acc_ndim=4
        )
        return K.conv2d_transpose(bb, x[0], x[1], call.attrs, qw, rq, name)
    channels = qw.shape[1]
    b = None if bias is None else np.broadcast_to(bias.reshape(-1), (channels,))
    rq = intmath.conv_requant(
        x[1].scale, x[1].zero_point, sw, qw, 1, b, out, lo, hi, acc_shape_axis=0, acc_ndim=1
    )
    return K.matmul(bb, x[0], qw, rq, name)


def _fold_concat(bb, st, v, out, name):
    call = st.lookup(v)
    if op_name(call) != "relax.concat":
        return None
    parts = [st.dequantized(f) for f in call.args[0].fields]
    if any(p is None for p in parts):
        return None
    ints = [
        x
        if p == out
        else K.requantize(
            bb, x, intmath.rescale_requant(p.scale, p.zero_point, out), f"{name}_in{i}"
        )
        for i, (x, p) in enumerate(parts)
    ]
    return bb.emit(relax.op.concat(ints, axis=int(call.attrs.axis)), name)


_AVG_POOLS = ("relax.nn.avg_pool2d", "relax.nn.avg_pool3d")


def _fold_pool(bb, st, v, out, name):
    call = st.lookup(v)
    x = st.dequantized(call.args[0]) if op_name(call) in _AVG_POOLS + ("relax.mean",) else None
    if x is None:
        return None
    xq, p = x
    if op_name(call) == "relax.mean":
        shape = shape_of(call.args[0])
        axes = [int(a) % len(shape) for a in call.attrs.axis]
        count = int(np.prod([shape[a] for a in axes]))
        rq = intmath.rescale_requant(p.scale, p.zero_point, out, count=count)
        return K.mean(bb, xq, axes, bool(call.attrs.keepdims), rq, name)
    k = int(np.prod([int(s) for s in call.attrs.pool_size]))
    divisor = k
    if not call.attrs.count_include_pad and any(int(q) for q in call.attrs.padding):
        a = call.attrs
        divisor = intmath.window_counts(
            shape_of(call.args[0])[2:], a.pool_size, a.strides, a.dilation, a.padding
        )
    rq = intmath.rescale_requant(p.scale, p.zero_point, out, count=k, divisor=divisor)
    return K.avg_pool(bb, xq, p, call.attrs, rq, name)


def _fold_binary(bb, st, v, out, name):
    """An elementwise op of two dequantized tensors. A product (a squeeze-excite gate times its
    features) -> ``(Qa - za) * (Qb - zb)`` and one requantize in int32 (S2 Eq. 6 with a
    one-term sum; :func:`~tvm_intq.core.intmath.product_requant`): a few vector instructions
    per 8 outputs where a 256x256 table costs a gather per output from 64 KB, twice L1
    (PP-OCR cls: 12 % of its time in those gathers). Divide, maximum, power, ... -> one
    256x256 table (the 2-D form of S2 Eq. 16)."""
    call = st.lookup(v)
    if op_name(call) not in NUMPY_OPS or len(call.args) != 2:
        return None
    a, b = st.dequantized(call.args[0]), st.dequantized(call.args[1])
    if a is None or b is None:
        return None
    if op_name(call) == "relax.multiply":
        rq = intmath.product_requant(a[1], b[1], out)
        return K.multiply_activations(bb, a[0], a[1], b[0], b[1], rq, name)
    table = intmath.lut2(lambda ra, rb: NUMPY_OPS[op_name(call)](call, ra, rb), a[1], b[1], out)
    return K.lookup2(bb, a[0], b[0], table, name)


def _fold_softmax(bb, st, v, out, name):
    call = st.lookup(v)
    x = st.dequantized(call.args[0]) if op_name(call) == "relax.nn.softmax" else None
    if x is None:
        return None
    axis = int(call.attrs.axis) % len(shape_of(call.args[0]))
    return K.softmax(bb, x[0], axis, intmath.softmax_int(x[1], out), name)


#: A per-channel table costs 256 bytes a channel; past this many channels an affine region
#: is one requantize with a multiplier and offset per element instead.
MAX_TABLE_CHANNELS = 64


def _region_source(st, v):
    """The one dequantized tensor the elementwise region ending at ``v`` reads, or None."""
    sources = set()

    def find(var):
        if st.dequantized(var) is not None:
            sources.add(st.resolve(var))
            return
        call = st.lookup(var)
        if op_name(call) is None:  # a function input, tuple item, ...: not an elementwise region
            sources.add(None)
            return
        for a in call.args:
            if isinstance(a, relax.Var):
                find(a)

    find(v)
    if len(sources) != 1 or None in sources:
        return None
    return sources.pop()


def _fold_lut(bb, st, v, out, name):
    """An elementwise region on one dequantized tensor -> one lookup table (S2 Eq. 16), or,
    when it is affine and a table would not do (constants along several axes, or too many
    channels), one requantize with per-element constants."""
    src = _region_source(st, v)
    fn = None if src is None else region_function(v, src, st.lookup)
    if fn is None:
        return None
    xq, p = st.dq[src]
    table, axis = build_table(fn, p, out, len(shape_of(src)))
    if table is not None and (table.ndim == 1 or table.shape[1] <= MAX_TABLE_CHANNELS):
        return K.lookup(bb, xq, table, axis, name)
    affine = affine_of(fn, p, len(shape_of(src)))
    if affine is None:
        return None if table is None else K.lookup(bb, xq, table, axis, name)
    a, b = affine
    shape = shape_of(v)
    if shape_of(src) != shape:  # constants broadcast the tensor out to their shape
        xq = bb.emit(relax.op.broadcast_to(xq, shape))
    ndim = len(shape)
    a, b = (c.reshape((1,) * (ndim - c.ndim) + c.shape) for c in (a, b))
    return K.requantize(bb, xq, intmath.affine_requant(p, a, b, out), name)


def _fold_requantize(bb, st, v, out, name):
    x = st.dequantized(v)
    if x is None:
        return None
    if x[1] == out:
        return x[0]
    return K.requantize(bb, x[0], intmath.rescale_requant(x[1].scale, x[1].zero_point, out), name)


# Tried in order on the tensor each quantize reads; the first that applies emits the layer.
FOLDERS = (
    _fold_requantize,
    _fold_linear,
    _fold_concat,
    _fold_pool,
    _fold_softmax,
    _fold_lut,
    _fold_binary,
)


def _passthrough_int(call, xq, p: intmath.QParams):
    """The same data movement on the int8 tensor (pads hold the zero point)."""
    args = [xq] + list(call.args[1:])
    if op_name(call) == "relax.nn.pad":
        return relax.op.nn.pad(
            xq,
            [int(w) for w in call.attrs.pad_width],
            pad_mode="constant",
            pad_value=float(p.zero_point),
        )
    return relax.Call(call.op, args, call.attrs, call.ty_args)


@tvm.transform.module_pass(opt_level=0, name="FoldToInteger")
class FoldToInteger:
    """Turn a QDQ graph (from :class:`Annotate`, or imported) into integer arithmetic.

    Walking ``main`` in order:

    * a data-movement op on a dequantized tensor moves below the dequantize::

          op(dequantize(q, s, zp))  ->  dequantize(op_int8(q), s, zp)

      (reshape, transpose, max pool, pad with ``zp``, nearest resize, slices);
    * each ``quantize(t, s_out, zp_out)`` becomes the integer form of what computes ``t``
      from dequantized inputs (S1's unified scale, S2 Eqs. 6 and 11-14)::

          quantize(clip(conv2d(dq(x), dq(Qw)) + b))   ->  clip((conv2d_i32(x, Qw)*MUL + ADD) >> S)
          quantize(matmul(dq(a), dq(b)))  ->  (matmul_i32(a - za, b - zb)*MUL + ADD) >> S
          quantize(conv2d_transpose(dq(x), dq(Qw)) + b)
                                          ->  (conv2d_transpose_i32(x - zx, Qw)*MUL + ADD) >> S
          quantize(dq(x, s1, z1), s2, z2)             ->  x, or (x*MUL + ADD) >> S
          quantize(dq(a) + dq(b))                     ->  (a*MA + b*MB + ADD) >> S
          quantize(concat(dq(x_i)))                   ->  concat(requantized x_i)
          quantize(avg_pool(dq(x))), quantize(mean)   ->  (window_sum(x)*MUL + ADD) >> S
          quantize(softmax(dq(x)))                    ->  integer softmax (exp table + division)
          quantize(f(dq(x))), f elementwise           ->  take(T, x + 128), T[i] = Q(f(R(i)))
          quantize(a*dq(x) + b), a, b constant        ->  (x*MUL + ADD) >> S, per element

      with MUL/ADD/S per output channel from :mod:`tvm_intq.core.intmath`. A weight is
      ``dequantize(Qw, sw, 0, axis)`` of a constant int8 ``Qw`` (OIHW for conv2d), with one
      scale or one per output channel.

    What matches none of these stays float between its dequantize and quantize; the float
    ops left are what :class:`CheckIntegerOnly` reports. Dead float code is removed.
    """

    def transform_module(self, mod, ctx):
        st = _State()

        def binding(bb, b, value):
            name = op_name(value)
            if name == "relax.dequantize":
                p = _qparams(value)
                new = bb.emit(value, b.var.name)
                if _weight(value) is not None:
                    st.weights[new] = _weight(value)
                if p is not None:
                    st.dq[new] = (value.args[0], p)
                st.defs[new] = value
                return new
            if is_passthrough(value) and st.dequantized(value.args[0]) is not None:
                xq, p = st.dequantized(value.args[0])
                moved = bb.emit(_passthrough_int(value, xq, p), b.var.name + "_i8")
                new = bb.emit(
                    relax.op.dequantize(
                        moved,
                        relax.const(np.float32(p.scale)),
                        relax.const(np.int8(p.zero_point)),
                        axis=-1,
                        out_dtype="float32",
                    ),
                    b.var.name,
                )
                st.dq[new] = (moved, p)
                st.defs[new] = value
                return new
            if name == "relax.quantize" and _qparams(value) is not None:
                out = _qparams(value)
                for fold in FOLDERS:
                    result = fold(bb, st, value.args[0], out, b.var.name)
                    if result is not None:
                        return result
            new = bb.emit(value, b.var.name)
            st.defs[new] = value
            return new

        mod = rewrite_main(mod, binding)
        return tvm.transform.Sequential(
            [
                relax.transform.CanonicalizeBindings(),
                relax.transform.DeadCodeElimination(),
            ]
        )(mod)
