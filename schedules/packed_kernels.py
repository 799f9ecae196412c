"""TE computes of int8 conv2d/dense in the blocked layouts a dot-product instruction wants.

For an instruction computing ``C[i] += sum_k A[k] * B[i, k]`` over ``L`` lanes and ``K`` bytes
(x86 VNNI ``vpdpbusd``: ``L = 16``, ``K = 4``):

* activations ``NCHW`` -> ``N, C/K, H, W, K`` (:func:`pack_data`; spatial padding with the
  zero point and the +128 uint8 shift happen in the same pass);
* weights ``OIHW`` -> ``O/L, I/K, KH, KW, L, K`` (:func:`pack_weight`, numpy, at compile time);
* the conv accumulates ``N, O/L, OH, OW, L`` in int32 (the ``L`` output channels of one
  instruction are contiguous, the ``K`` input channels it reduces too), and its epilogue
  (the layer's requantize, or the int32 correction of the shift) writes plain ``NCHW``.

Channels are padded up to multiples of ``K`` and ``L`` with zero weights; the padded output
channels are computed and never stored. Per-channel constants are kernel *inputs*, not
immediates, so one tuned kernel serves every calibration of the same shapes.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

#: Name of the accumulation block; the default schedule and `inspect` find kernels by it.
CONV_BLOCK = "conv2d_packed_int8"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pack_weight(w: np.ndarray, lanes: int, k: int) -> np.ndarray:
    """``OIHW`` int8 -> ``O/lanes, I/k, KH, KW, lanes, k``, zero-padded channels."""
    o, i, kh, kw = w.shape
    oo, io = ceil_div(o, lanes), ceil_div(i, k)
    padded = np.zeros((oo * lanes, io * k, kh, kw), w.dtype)
    padded[:o, :i] = w
    return np.ascontiguousarray(
        padded.reshape(oo, lanes, io, k, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def pack_data(x: te.Tensor, pad_value: te.Tensor, padding, k: int, offset: int, dtype: str):
    """``NCHW`` int8 -> ``N, C/k, H + pads, W + pads, k`` of ``dtype``, every value ``+ offset``.

    ``padding`` is ``(top, left, bottom, right)``; padded positions hold ``pad_value + offset``
    (the layer's input zero point, a 0-d int8 tensor), padded channels hold 0 (their weights
    are 0).
    """
    n, c, h, w = (int(d) for d in x.shape)
    top, left, bottom, right = padding

    def value(b, co, y, xx, ci):
        ch = co * k + ci
        inside = tirx.all(y >= top, y < top + h, xx >= left, xx < left + w)
        v = tirx.if_then_else(inside, x[b, tirx.min(ch, c - 1), y - top, xx - left], pad_value[()])
        shifted = (v.astype("int32") + offset).astype(dtype)
        return tirx.if_then_else(ch < c, shifted, tirx.const(0, dtype))

    return te.compute((n, ceil_div(c, k), h + top + bottom, w + left + right, k), value,
                      name="pack_int8", tag="injective")


def pack_rows(x: te.Tensor, k: int, offset: int, dtype: str):
    """A dense layer's ``M, K`` int8 input -> ``M, K/k, 1, 1, k`` (a 1x1 conv over ``M`` rows),
    every value ``+ offset``; padded columns hold 0."""
    m, c = (int(d) for d in x.shape)

    def value(r, co, _y, _x, ci):
        ch = co * k + ci
        shifted = (x[r, tirx.min(ch, c - 1)].astype("int32") + offset).astype(dtype)
        return tirx.if_then_else(ch < c, shifted, tirx.const(0, dtype))

    return te.compute((m, ceil_div(c, k), 1, 1, k), value, name="pack_int8", tag="injective")


def _accumulate(xp: te.Tensor, wp: te.Tensor, strides, dilation):
    n, _, hp, wp_, _ = (int(d) for d in xp.shape)
    oo, io, kh, kw, lanes, k = (int(d) for d in wp.shape)
    sh, sw = strides
    dh, dw = dilation
    oh = (hp - (kh - 1) * dh - 1) // sh + 1
    ow = (wp_ - (kw - 1) * dw - 1) // sw + 1
    rc = te.reduce_axis((0, io), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rk = te.reduce_axis((0, k), "rk")
    return te.compute(
        (n, oo, oh, ow, lanes),
        lambda b, o, y, x, l: te.sum(
            xp[b, rc, y * sh + ry * dh, x * sw + rx * dw, rk].astype("int32")
            * wp[o, rc, ry, rx, l, rk].astype("int32"),
            axis=[rc, ry, rx, rk]),
        name=CONV_BLOCK)


def _out_index(out_ndim: int, lanes: int):
    """Map an output index to the accumulator index: NCHW (4-D) or a dense ``M, N`` (2-D)."""
    if out_ndim == 4:
        return lambda b, o, y, x: ((b, o // lanes, y, x, o % lanes), o)
    return lambda m, o: ((m, o // lanes, 0, 0, o % lanes), o)


def _out_shape(acc, channels: int, out_ndim: int):
    n, _, oh, ow, _ = (int(d) for d in acc.shape)
    return (n, channels, oh, ow) if out_ndim == 4 else (n, channels)


def conv2d_requant(xp, wp, mul, add, shift, lo, hi, strides, dilation, channels: int,
                   out_ndim: int = 4):
    """Packed conv (or dense: 1x1 over ``M`` rows, ``out_ndim`` 2) + the layer's requantize
    ``int8(clip((int64(acc) * MUL + ADD) >> S, lo, hi))``, per output channel ``o``
    (``mul``..``hi`` are int64 vectors of length ``channels``), written unpacked."""
    acc = _accumulate(xp, wp, strides, dilation)
    index = _out_index(out_ndim, int(wp.shape[4]))

    def requant(*i):
        a, o = index(*i)
        v = (acc[a].astype("int64") * mul[o] + add[o]) >> shift[o]
        return te.max(te.min(v, hi[o]), lo[o]).astype("int8")

    return te.compute(_out_shape(acc, channels, out_ndim), requant, name="requantize",
                      tag="elemwise")


def conv2d_int32(xp, wp, correction, strides, dilation, channels: int, out_ndim: int = 4):
    """Packed conv (or dense) with a plain int32 result: ``acc - correction[o]`` (the shifted
    input's ``offset * sum(Qw)``), written unpacked."""
    acc = _accumulate(xp, wp, strides, dilation)
    index = _out_index(out_ndim, int(wp.shape[4]))

    def unpack(*i):
        a, o = index(*i)
        return acc[a] - correction[o]

    return te.compute(_out_shape(acc, channels, out_ndim), unpack, name="unpack",
                      tag="elemwise")
