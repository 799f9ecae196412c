"""A numpy evaluator of the integer program: the reference the compiled code is held to.

:class:`~tvm_intq.relay_passes.FoldToInteger` turns a quantized graph into plain Relax
operators on int8/int32/int64 tensors. The compiled program must compute exactly what that IR
says, bit for bit, on every target. This module says it a second time, independently of TVM's
lowering: :func:`run_reference` walks ``main`` binding by binding and evaluates each operator in
numpy with the integer semantics the IR states (int64 where the IR says int64, arithmetic right
shift, floor division, clip before every narrowing cast, ``take`` with clipped indices).

It computes nothing of its own: every multiplier, offset, shift, clip bound and table it uses is
a constant of the IR, and those constants were computed by :mod:`tvm_intq.core.intmath` (S2 Eqs.
11-16, 18-22); ``intq.requantize`` is :meth:`~tvm_intq.core.intmath.Requant.apply`. The boundary
ops follow ``relax.quantize``/``relax.dequantize`` as TVM lowers them
(:func:`~tvm_intq.core.intmath.quantize_f32`, :func:`~tvm_intq.core.intmath.dequantize_f32`).

Public API::

    run_reference(mod, inputs)  -> np.ndarray, or a tuple of them for a tuple-returning main
    OPS                         op name -> fn(call, *argument values) (add an op: add a line)

An operator missing from :data:`OPS` raises ``NotImplementedError`` naming it.
"""

from __future__ import annotations

import itertools

import numpy as np
import tvm
from tvm import relax

from tvm_intq.core.intmath import Requant, dequantize_f32, quantize_f32

__all__ = ["OPS", "run_reference"]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _ints(seq) -> list[int]:
    return [int(v) for v in seq]


def _axes(attr, ndim: int):
    """A reduce/squeeze axis attribute as a tuple of non-negative ints (None: all axes)."""
    return None if attr is None else tuple(int(a) % ndim for a in attr)


def _qparam(v, x: np.ndarray, axis: int) -> np.ndarray:
    """A quantize/dequantize scale or zero point, broadcastable against ``x``."""
    v = np.asarray(v)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return v.reshape(shape)


def _out_dtype(call) -> str:
    return str(call.ty.dtype)


def _windows(x: np.ndarray, kernel, strides, dilation):
    """Yield ``(tap, view)``: for each kernel tap, the strided input it reads (trailing axes)."""
    n = len(kernel)
    out = [
        (size - (k - 1) * d - 1) // st + 1
        for size, k, st, d in zip(x.shape[-n:], kernel, strides, dilation)
    ]
    for tap in itertools.product(*(range(k) for k in kernel)):
        yield (
            tap,
            x[
                (Ellipsis,)
                + tuple(
                    slice(t * d, t * d + (o - 1) * st + 1, st)
                    for t, d, o, st in zip(tap, dilation, out, strides)
                )
            ],
        )


def _pad_spatial(x: np.ndarray, padding, n: int, value) -> np.ndarray:
    """Pad the trailing ``n`` axes; Relax writes ``[before_1..before_n, after_1..after_n]``."""
    p = _ints(padding)
    p = p * 2 if len(p) == n else p
    return np.pad(
        x, [(0, 0)] * (x.ndim - n) + [(p[i], p[i + n]) for i in range(n)], constant_values=value
    )


def _require(cond: bool, what: str):
    if not cond:
        raise NotImplementedError(f"reference: {what}")


# ---------------------------------------------------------------------------------------------
# Operators
# ---------------------------------------------------------------------------------------------
def _quantize(call, x, scale, zp):
    a, info = int(call.attrs.axis), np.iinfo(_out_dtype(call))
    q = quantize_f32(x, _qparam(scale, x, a), _qparam(zp, x, a), info.min, info.max)
    return q.astype(_out_dtype(call))


def _dequantize(call, q, scale, zp):
    a = int(call.attrs.axis)
    return dequantize_f32(q, _qparam(scale, q, a), _qparam(zp, q, a)).astype(_out_dtype(call))


def _conv2d(call, x, w):
    a = call.attrs
    _require(
        str(a.data_layout) == "NCHW"
        and str(a.kernel_layout) == "OIHW"
        and str(a.out_layout) == "NCHW",
        "conv2d layouts other than NCHW/OIHW",
    )
    acc_t = np.int64 if x.dtype.kind in "iu" else np.float64
    x = _pad_spatial(x.astype(acc_t), a.padding, 2, 0)
    g, (n, c), o = int(a.groups), x.shape[:2], w.shape[0]
    xg = x.reshape(n, g, c // g, *x.shape[2:])
    wg = w.reshape(g, o // g, c // g, *w.shape[2:]).astype(acc_t)
    acc = sum(
        np.einsum("ngchw,goc->ngohw", view, wg[(Ellipsis,) + tap])
        for tap, view in _windows(xg, w.shape[2:], _ints(a.strides), _ints(a.dilation))
    )
    return acc.reshape(n, o, *acc.shape[-2:]).astype(_out_dtype(call))


def _conv2d_transpose(call, x, w):
    a = call.attrs
    _require(
        str(a.data_layout) == "NCHW"
        and str(a.kernel_layout) == "IOHW"
        and str(a.out_layout) == "NCHW"
        and int(a.groups) == 1,
        "conv2d_transpose other than ungrouped NCHW/IOHW",
    )
    acc_t = np.int64 if x.dtype.kind in "iu" else np.float64
    (n, _, h, wd), (kh, kw) = x.shape, w.shape[2:]
    (sh, sw), (dh, dw), (oph, opw) = _ints(a.strides), _ints(a.dilation), _ints(a.output_padding)
    full = np.zeros(
        (
            n,
            w.shape[1],
            (h - 1) * sh + (kh - 1) * dh + 1 + oph,
            (wd - 1) * sw + (kw - 1) * dw + 1 + opw,
        ),
        acc_t,
    )
    for i, j in itertools.product(range(kh), range(kw)):  # each tap scatters the whole input
        full[
            :, :, i * dh : i * dh + (h - 1) * sh + 1 : sh, j * dw : j * dw + (wd - 1) * sw + 1 : sw
        ] += np.einsum("nchw,co->nohw", x.astype(acc_t), w[:, :, i, j].astype(acc_t))
    top, left, bottom, right = _ints(a.padding)
    return full[:, :, top : full.shape[2] - bottom, left : full.shape[3] - right].astype(
        _out_dtype(call)
    )


def _matmul(call, a, b):
    acc_t = np.int64 if a.dtype.kind in "iu" else np.float64
    return np.matmul(a.astype(acc_t), b.astype(acc_t)).astype(_out_dtype(call))


def _pool_geometry(call, x):
    a = call.attrs
    k = _ints(a.pool_size)
    spatial = "DHW"[3 - len(k) :]
    _require(
        str(a.layout) in ("NC" + spatial, "N" + spatial + "C")
        and str(a.out_layout) == str(a.layout)
        and not bool(a.ceil_mode),
        f"{call.op.name} with ceil_mode or layout {a.layout} -> {a.out_layout}",
    )
    return a, k, _ints(a.strides), _ints(a.dilation)


def _channels_first(pool):
    """``pool`` (computing on NC + spatial) for either layout: a channels-last pool (NHWC, as
    the TFLite frontend imports one) moves the channels next to the batch and back."""

    def run(call, x):
        if str(call.attrs.layout).endswith("C"):
            return np.moveaxis(pool(call, np.moveaxis(x, -1, 1)), 1, -1)
        return pool(call, x)

    return run


@_channels_first
def _max_pool(call, x):
    """Padding holds the dtype's minimum, as topi pads a max pool."""
    a, k, st, dil = _pool_geometry(call, x)
    low = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else np.finfo(x.dtype).min
    x = _pad_spatial(x, a.padding, len(k), low)
    return np.max(np.stack([v for _, v in _windows(x, k, st, dil)]), axis=0)


@_channels_first
def _avg_pool(call, x):
    """The count_include_pad form FoldToInteger emits: window sum / k; on integers with TVM's
    truncating division (FoldToInteger's sums are multiples of k, so it is exact)."""
    a, k, st, dil = _pool_geometry(call, x)
    _require(
        not any(_ints(a.padding)) or bool(a.count_include_pad),
        f"{call.op.name} with padding and count_include_pad=False",
    )
    count = int(np.prod(k))
    wide = np.int64 if x.dtype.kind in "iu" else np.float64
    s = sum(v for _, v in _windows(_pad_spatial(x.astype(wide), a.padding, len(k), 0), k, st, dil))
    if x.dtype.kind in "iu":
        return (np.sign(s) * (np.abs(s) // count)).astype(_out_dtype(call))
    return (s / count).astype(_out_dtype(call))


def _resize2d(call, x, size):
    """nearest_neighbor as topi.image.resize2d computes it (float32 coordinates)."""
    a = call.attrs
    _require(
        str(a.method) == "nearest_neighbor" and str(a.layout) == "NCHW",
        f"resize2d method {a.method} / layout {a.layout}",
    )
    mode, rounding = str(a.coordinate_transformation_mode), str(a.rounding_method)
    if rounding == "":
        rounding = "round" if mode == "align_corners" else "floor"
    f32 = np.float32

    def index(in_size, out_size):
        o = np.arange(out_size)
        ratio = out_size / in_size
        if (
            mode == "asymmetric"
            and rounding == "floor"
            and ratio % 1 == 0
            and ratio <= 1 / (1e-5 * in_size + 1e-5)
        ):
            return o // int(ratio)  # topi's integer-division shortcut
        scale = f32(in_size) / f32(out_size)
        of = o.astype(f32)
        if mode == "half_pixel":
            v = (of + f32(0.5)) * scale - f32(0.5)
        elif mode == "align_corners":
            v = (f32(in_size - 1) / f32(out_size - 1)) * of
        elif mode == "asymmetric":
            v = scale * of
        else:
            raise NotImplementedError(f"reference: resize2d coordinate mode {mode}")
        if rounding == "round":
            v = np.rint(v)
        elif rounding == "round_prefer_floor":
            v = np.ceil(v - f32(0.5))
        elif rounding == "round_prefer_ceil":
            v = np.floor(v + f32(0.5))
        elif rounding == "floor":
            v = np.floor(v + f32(1e-5))
        elif rounding == "ceil":
            v = np.ceil(v - f32(1e-5))
        else:
            raise NotImplementedError(f"reference: resize2d rounding {rounding}")
        return np.clip(v.astype(np.int64), 0, in_size - 1)

    oh, ow = _ints(size)
    rows, cols = index(x.shape[2], oh), index(x.shape[3], ow)
    return x[:, :, rows[:, None], cols[None, :]].astype(_out_dtype(call))


def _pad(call, x):
    _require(str(call.attrs.pad_mode) == "constant", f"pad mode {call.attrs.pad_mode}")
    return np.pad(
        x,
        np.reshape(_ints(call.attrs.pad_width), (-1, 2)),
        constant_values=np.asarray(call.attrs.pad_value).astype(x.dtype),
    )


def _take(call, x, idx):
    axis, mode = int(call.attrs.axis), str(call.attrs.mode)
    n = x.shape[axis]
    idx = idx.astype(np.int64)
    if mode == "clip":
        idx = np.clip(idx, 0, n - 1)
    elif mode == "wrap":
        idx = np.mod(idx, n)
    elif np.any((idx < -n) | (idx >= n)):  # "fast": out-of-range is undefined in TVM
        raise IndexError(f"reference: take index out of range [0, {n}) in fast mode")
    return np.take(x, idx, axis=axis)


def _strided_slice(call, x, axes, begin, end, strides=None):
    index = [slice(None)] * x.ndim
    strides = strides if strides is not None else [1] * len(axes)
    for ax, b, e, s in zip(axes, begin, end, strides):
        index[int(ax)] = slice(int(b), int(e), int(s))
    return x[tuple(index)]


def _reduce(fn):
    def run(call, x):
        out = fn(x, axis=_axes(call.attrs.axis, x.ndim), keepdims=bool(call.attrs.keepdims))
        return np.asarray(out).astype(_out_dtype(call))

    return run


def _binary(fn):
    return lambda call, a, b: np.asarray(fn(a, b)).astype(_out_dtype(call))


OPS = {
    "relax.quantize": _quantize,
    "relax.dequantize": _dequantize,
    "relax.astype": lambda call, x: x.astype(str(call.attrs.dtype)),
    "relax.add": _binary(np.add),
    "relax.subtract": _binary(np.subtract),
    "relax.multiply": _binary(np.multiply),
    "relax.right_shift": _binary(np.right_shift),  # arithmetic on signed integers
    "relax.left_shift": _binary(np.left_shift),
    "relax.floor_divide": _binary(np.floor_divide),
    "relax.maximum": _binary(np.maximum),
    "relax.minimum": _binary(np.minimum),
    "relax.clip": lambda call, x, lo, hi: np.clip(x, lo, hi).astype(x.dtype),
    "intq.requantize": lambda call, acc, mul, add, shift, lo, hi: Requant(
        mul, add, shift, int(lo), int(hi)
    ).apply(acc),
    "relax.take": _take,
    "relax.max": _reduce(np.max),
    "relax.min": _reduce(np.min),
    "relax.sum": _reduce(np.sum),
    "relax.nn.pad": _pad,
    "relax.nn.conv2d": _conv2d,
    "relax.nn.conv2d_transpose": _conv2d_transpose,
    "relax.matmul": _matmul,
    **{f"relax.nn.max_pool{n}d": _max_pool for n in (1, 2, 3)},
    **{f"relax.nn.avg_pool{n}d": _avg_pool for n in (1, 2, 3)},
    "relax.image.resize2d": _resize2d,
    "relax.concat": lambda call, xs: np.concatenate(xs, axis=int(call.attrs.axis)),
    "relax.reshape": lambda call, x, shape: x.reshape(_ints(shape)),
    "relax.broadcast_to": lambda call, x, shape: np.broadcast_to(x, _ints(shape)).copy(),
    "relax.flatten": lambda call, x: x.reshape(-1),
    "relax.permute_dims": lambda call, x: np.transpose(
        x, None if call.attrs.axes is None else _ints(call.attrs.axes)
    ),
    "relax.squeeze": lambda call, x: np.squeeze(x, _axes(call.attrs.axis, x.ndim)),
    "relax.expand_dims": lambda call, x: np.expand_dims(x, tuple(_ints(call.attrs.axis))),
    "relax.strided_slice": _strided_slice,
}


# ---------------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------------
def _value(expr, env: dict):
    if isinstance(expr, relax.Var):
        return env[expr]
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    if isinstance(expr, relax.Tuple):
        return tuple(_value(f, env) for f in expr.fields)
    if isinstance(expr, relax.TupleGetItem):
        return _value(expr.tuple_value, env)[expr.index]
    if isinstance(expr, relax.ShapeExpr):
        return tuple(int(v) for v in expr.values)
    if isinstance(expr, tvm.ir.Constant):  # IntImm / FloatImm (clip bounds, slice indices)
        return expr.value
    if isinstance(expr, relax.Call):
        name = expr.op.name if isinstance(expr.op, tvm.ir.Op) else str(expr.op)
        if name not in OPS:
            raise NotImplementedError(f"reference: operator {name} is not supported")
        return OPS[name](expr, *(_value(a, env) for a in expr.args))
    raise NotImplementedError(f"reference: expression {type(expr).__name__} is not supported")


def run_reference(mod: tvm.IRModule, inputs: dict):
    """Evaluate ``mod["main"]`` on numpy ``inputs`` (by parameter name), binding by binding.

    Returns the value ``main`` returns: one array, or a tuple for a tuple-returning ``main``.
    Raises ``NotImplementedError`` naming the first operator it cannot evaluate, and
    ``KeyError`` naming a parameter missing from ``inputs``.
    """
    func = mod["main"]
    env = {}
    for p in func.params:
        if p.name not in inputs:
            raise KeyError(f"reference: no input for parameter '{p.name}'")
        env[p] = np.asarray(inputs[p.name])
    body = func.body
    for block in body.blocks:
        for b in block.bindings:
            _require(isinstance(b, relax.VarBinding), f"binding {type(b).__name__}")
            env[b.var] = _value(b.value, env)
    return _value(body.body, env)
