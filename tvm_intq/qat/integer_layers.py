"""The integer layers of the compiled program, evaluated on int8 codes in numpy.

``FoldToInteger`` emits each quantized layer as Relax integer kernels with constants from
:mod:`tvm_intq.core.intmath`; these functions compute the same layers on the same constants (each
takes int8 codes as int64 arrays and returns int8 codes), so that the QAT forward pass holds
the integer program's values. Accumulators are sums of int8 products: torch computes them in
float64, exact for any accumulator below 2^53.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tvm_intq.core import intmath
from tvm_intq.core.intmath import QParams


def _acc(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, np.float64))


def _to_int(acc: torch.Tensor) -> np.ndarray:
    return np.rint(acc.numpy()).astype(np.int64)


def linear(
    x: np.ndarray,
    inp: QParams,
    qw: np.ndarray,
    sw: np.ndarray,
    bias,
    out: QParams,
    lo: int,
    hi: int,
    conv_attrs=None,
) -> np.ndarray:
    """conv2d (``conv_attrs``; input padded with ``zp_in``) or dense (``qw`` [in, out]) with one
    requantize per output channel (:func:`intmath.conv_requant`, S2 Eq. 6)."""
    if conv_attrs is not None:
        a = conv_attrs
        p = [int(v) for v in a.padding]
        xp = np.pad(x, [(0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])], constant_values=inp.zero_point)
        acc = F.conv2d(
            _acc(xp),
            _acc(qw),
            None,
            [int(v) for v in a.strides],
            0,
            [int(v) for v in a.dilation],
            int(a.groups),
        )
        rq = intmath.conv_requant(
            inp.scale, inp.zero_point, sw, qw, 0, bias, out, lo, hi, acc_shape_axis=1, acc_ndim=4
        )
    else:
        acc = torch.matmul(_acc(x), _acc(qw))
        rq = intmath.conv_requant(
            inp.scale, inp.zero_point, sw, qw, 1, bias, out, lo, hi, acc_shape_axis=0, acc_ndim=1
        )
    return rq.apply(_to_int(acc)).astype(np.int64)


def conv_transpose(
    x: np.ndarray,
    inp: QParams,
    qw: np.ndarray,
    sw: np.ndarray,
    bias,
    out: QParams,
    lo: int,
    hi: int,
    call,
) -> np.ndarray:
    """conv2d_transpose (NCHW/IOHW) with one requantize per output channel: the input zero
    point is subtracted before the product, as ``integer_kernels.conv2d_transpose`` does (a
    border output sums fewer taps, so ``zp_in * sum(Qw)`` is no per-channel constant)."""
    from tvm_intq.qat.torch_ops import _conv2d_transpose

    acc = _conv2d_transpose(call, _acc(x - inp.zero_point), _acc(qw))
    rq = intmath.conv_requant(
        inp.scale, 0, sw, qw, 1, bias, out, lo, hi, acc_shape_axis=1, acc_ndim=4
    )
    return rq.apply(_to_int(acc)).astype(np.int64)


def matmul_activations(
    a: np.ndarray, pa: QParams, b: np.ndarray, pb: QParams, out: QParams, lo: int, hi: int
) -> np.ndarray:
    """A product of two activations, zero points subtracted first
    (:func:`intmath.matmul_requant`)."""
    acc = torch.matmul(_acc(a - pa.zero_point), _acc(b - pb.zero_point))
    rq = intmath.matmul_requant(pa, pb, out, a.shape[-1], lo, hi)
    return rq.apply(_to_int(acc)).astype(np.int64)


def multiply_activations(
    a: np.ndarray, pa: QParams, b: np.ndarray, pb: QParams, out: QParams
) -> np.ndarray:
    """An elementwise product of two activations (a squeeze-excite gate), zero points
    subtracted first, one int32 requantize (:func:`intmath.product_requant`)."""
    product = (a - pa.zero_point) * (b - pb.zero_point)
    return intmath.product_requant(pa, pb, out).apply(product).astype(np.int64)


def add(
    a: np.ndarray,
    pa: QParams,
    b: np.ndarray,
    pb: QParams,
    out: QParams,
    lo: int,
    hi: int,
    subtract: bool,
) -> np.ndarray:
    return intmath.add_requant(pa, pb, out, lo, hi, subtract).apply(a, b).astype(np.int64)


def concat(parts, out: QParams, axis: int) -> np.ndarray:
    """Each input requantized to the output's parameters unless it already has them."""
    return np.concatenate(
        [
            q
            if p == out
            else intmath.rescale_requant(p.scale, p.zero_point, out).apply(q).astype(np.int64)
            for q, p in parts
        ],
        axis=axis,
    )


def mean(x: np.ndarray, p: QParams, axes, keepdims: bool, out: QParams) -> np.ndarray:
    count = int(np.prod([x.shape[a] for a in axes]))
    rq = intmath.rescale_requant(p.scale, p.zero_point, out, count=count)
    return rq.apply(np.sum(x, axis=tuple(axes), keepdims=keepdims)).astype(np.int64)


def avg_pool2d(x: np.ndarray, p: QParams, attrs, out: QParams, divisor) -> np.ndarray:
    """Window sums over the input padded with ``zp_in``, one requantize (``divisor``: ``k``, or
    the per-position count of unpadded values)."""
    k = [int(v) for v in attrs.pool_size]
    pad = [int(v) for v in attrs.padding]
    xp = np.pad(
        x, [(0, 0), (0, 0), (pad[0], pad[2]), (pad[1], pad[3])], constant_values=p.zero_point
    )
    acc = F.avg_pool2d(_acc(xp), k, [int(v) for v in attrs.strides], 0, divisor_override=1)
    rq = intmath.rescale_requant(p.scale, p.zero_point, out, count=int(np.prod(k)), divisor=divisor)
    return rq.apply(_to_int(acc)).astype(np.int64)


def softmax(x: np.ndarray, p: QParams, out: QParams, axis: int) -> np.ndarray:
    return intmath.softmax_int(p, out).apply(x, axis).astype(np.int64)


def lookup(x: np.ndarray, table: np.ndarray, channel_axis) -> np.ndarray:
    return intmath.apply_lut(x, table, channel_axis).astype(np.int64)


def lookup2(a: np.ndarray, b: np.ndarray, table: np.ndarray) -> np.ndarray:
    return table[a - intmath.QMIN, b - intmath.QMIN].astype(np.int64)
