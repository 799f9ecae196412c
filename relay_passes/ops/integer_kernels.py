"""Emit the integer form of each quantized layer as Relax operators.

Each function takes int8 input vars and the constants that :mod:`tvm_intq.core.intmath` computed,
and emits the integer computation into a BlockBuilder: Relax operators (int8 conv/matmul with
int32 accumulation, int64 multiply/add/shift, clip, cast, take) and our ``intq.requantize``
(:mod:`.requantize`), so that legalization and FuseOps turn a layer into one kernel and any
target can compile it.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from tvm_intq.core import intmath
from tvm_intq.relay_passes.ops.requantize import requantize as requantize_op


def _const(value, dtype):
    return relax.const(np.asarray(value).astype(dtype), dtype)


def requantize(bb, acc, rq: intmath.Requant, name: str):
    """``clip((acc * MUL + ADD) >> S, lo, hi)`` in int64, cast to int8 (S2 Eqs. 11-14): one
    ``intq.requantize``."""
    return bb.emit(requantize_op(acc, rq), name)


def pad_with(bb, x, padding: list[int], value: int):
    """Pad the spatial axes of an NC... tensor with an integer (the input zero point).
    ``padding`` is Relax's ``[before_1, ..., before_n, after_1, ..., after_n]``."""
    if not any(padding):
        return x
    n = len(padding) // 2
    width = [0, 0, 0, 0] + [p for i in range(n) for p in (padding[i], padding[i + n])]
    return bb.emit(R.nn.pad(x, width, pad_value=float(value)))


def conv2d(bb, x, inp: intmath.QParams, attrs, qw: np.ndarray, rq: intmath.Requant, name: str):
    """int8 conv2d (any groups) with int32 accumulation; padding holds ``zp_in`` so the
    zero-point correction folded into ``ADD`` is exact at the borders too. A grouped conv
    that is not depthwise (AlexNet's, ResNeXt's) is one conv per group over its slice of the
    input channels, each with its channels' requantize, concatenated: the same integers, and
    convs the packed kernels take (a grouped one compiles to TVM's plain loops: 96 % of
    AlexNet's time)."""
    groups, per_group = int(attrs.groups), qw.shape[1]
    if groups == 1 or per_group == 1:  # one conv, or a depthwise one (its own kernel)
        return _conv2d_requant(bb, x, inp, attrs, qw, groups, rq, name)
    outs = qw.shape[0] // groups
    parts = []
    for g in range(groups):
        xg = bb.emit(R.strided_slice(x, axes=[1], begin=[g * per_group], end=[(g + 1) * per_group]))
        channels = slice(g * outs, (g + 1) * outs)
        rq_g = _channels(rq, channels)
        parts.append(_conv2d_requant(bb, xg, inp, attrs, qw[channels], 1, rq_g, f"{name}_g{g}"))
    return bb.emit(R.concat(parts, axis=1), name)


def _channels(rq: intmath.Requant, channels: slice) -> intmath.Requant:
    """``rq`` of a conv's NCHW accumulator for the output channels ``channels``: its
    per-channel arrays (``1, O, 1, 1``, ``intmath.conv_requant``) cut along axis 1, per-tensor
    values (size 1 there) as they are."""

    def cut(v):
        v = np.asarray(v)
        return v[:, channels] if v.ndim > 1 and v.shape[1] > 1 else v

    return intmath.Requant(cut(rq.mul), cut(rq.add), cut(rq.shift), rq.lo, rq.hi)


def _conv2d_requant(bb, x, inp, attrs, qw, groups: int, rq, name):
    x = pad_with(bb, x, [int(p) for p in attrs.padding], inp.zero_point)
    acc = bb.emit(
        R.nn.conv2d(
            x,
            relax.const(qw),
            strides=attrs.strides,
            padding=[0, 0, 0, 0],
            dilation=attrs.dilation,
            groups=groups,
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_dtype="int32",
        )
    )
    return requantize(bb, acc, rq, name)


def matmul(bb, x, qw: np.ndarray, rq: intmath.Requant, name: str):
    acc = bb.emit(R.matmul(x, relax.const(qw), out_dtype="int32"))
    return requantize(bb, acc, rq, name)


def conv2d_transpose(
    bb, x, inp: intmath.QParams, attrs, qw: np.ndarray, rq: intmath.Requant, name: str
):
    """Transposed conv (NCHW/IOHW) of int8 codes with int32 accumulation. The input zero point
    is subtracted first: an output position near the border sums fewer taps than the others,
    so ``zp_in * sum(Qw)`` is not one constant per channel as for conv2d (the operands then fit
    9 bits; |acc| is at most twice conv_requant's int8 bound, far inside int64's headroom)."""
    xi = bb.emit(R.subtract(bb.emit(R.astype(x, "int32")), _const(inp.zero_point, "int32")))
    acc = bb.emit(
        R.nn.conv2d_transpose(
            xi,
            relax.const(qw.astype(np.int32)),
            strides=attrs.strides,
            padding=attrs.padding,
            output_padding=attrs.output_padding,
            dilation=attrs.dilation,
            groups=int(attrs.groups),
            data_layout="NCHW",
            kernel_layout="IOHW",
            out_dtype="int32",
        )
    )
    return requantize(bb, acc, rq, name)


def _centred(bb, x, p: intmath.QParams):
    """``Qx - zx`` in int32 (9 bits)."""
    return bb.emit(R.subtract(bb.emit(R.astype(x, "int32")), _const(p.zero_point, "int32")))


def matmul_activations(
    bb, a, pa: intmath.QParams, b, pb: intmath.QParams, rq: intmath.Requant, name: str
):
    """A matrix product of two int8 activations: zero points subtracted first (the operands
    then fit 9 bits), int32 matmul, one requantize
    (:func:`tvm_intq.core.intmath.matmul_requant`)."""
    acc = bb.emit(R.matmul(_centred(bb, a, pa), _centred(bb, b, pb), out_dtype="int32"))
    return requantize(bb, acc, rq, name)


def multiply_activations(
    bb, a, pa: intmath.QParams, b, pb: intmath.QParams, rq: intmath.Requant, name: str
):
    """An elementwise (broadcasting) product of two int8 activations:
    ``((Qa - za) * (Qb - zb) * MUL + ADD) >> S`` in int32
    (:func:`tvm_intq.core.intmath.product_requant`)."""
    x = bb.emit(R.multiply(_centred(bb, a, pa), _centred(bb, b, pb)))
    x = bb.emit(R.multiply(x, _const(int(rq.mul), "int32")))
    return _shift_and_clip(bb, x, int(rq.add), int(rq.shift), rq.lo, rq.hi, "int32", name)


def _shift_and_clip(bb, x, add: int, shift: int, lo: int, hi: int, dtype: str, name: str):
    """``clip((x + add) >> shift, lo, hi)`` in ``dtype``, cast to int8."""
    x = bb.emit(R.add(x, _const(add, dtype)))
    x = bb.emit(R.right_shift(x, _const(shift, dtype)))
    x = bb.emit(R.clip(x, lo, hi))
    return bb.emit(R.astype(x, "int8"), name)


def add(bb, a, b, ar: intmath.AddRequant, name: str):
    """``(Qa*MA + Qb*MB + ADD) >> S`` for an elementwise add/subtract (``MB < 0``) of two int8
    tensors, in int32 where it fits (:func:`~tvm_intq.core.intmath.narrow_add_requant`)."""
    wide = "int32" if ar.fits_int32() else "int64"
    xa = bb.emit(R.multiply(bb.emit(R.astype(a, wide)), _const(ar.mul_a, wide)))
    xb = bb.emit(R.multiply(bb.emit(R.astype(b, wide)), _const(ar.mul_b, wide)))
    x = bb.emit(R.add(xa, xb))
    return _shift_and_clip(bb, x, ar.add, ar.shift, ar.lo, ar.hi, wide, name)


_AVG_POOLS = {2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}


def avg_pool(bb, x, inp: intmath.QParams, attrs, rq: intmath.Requant, name: str):
    """Window sums of int8 values, then one requantize (per output position when padded
    values are not counted). The sum is computed exactly as ``avg_pool(k * x)`` over an
    explicitly padded input: every window is full, so the pool divides ``k * sum`` by ``k``."""
    pool_size = [int(p) for p in attrs.pool_size]
    k = int(np.prod(pool_size))
    x = pad_with(bb, x, [int(p) for p in attrs.padding], inp.zero_point)
    x = bb.emit(R.multiply(bb.emit(R.astype(x, "int32")), _const(k, "int32")))
    acc = bb.emit(
        _AVG_POOLS[len(pool_size)](
            x,
            pool_size=pool_size,
            strides=attrs.strides,
            padding=[0] * (2 * len(pool_size)),
            dilation=attrs.dilation,
            count_include_pad=True,
            layout=attrs.layout,
        )
    )
    return requantize(bb, acc, rq, name)


def mean(bb, x, axes, keepdims: bool, rq: intmath.Requant, name: str):
    acc = bb.emit(R.sum(bb.emit(R.astype(x, "int32")), axis=axes, keepdims=keepdims))
    return requantize(bb, acc, rq, name)


def softmax(bb, x, axis: int, sm: intmath.SoftmaxInt, name: str):
    """Integer softmax (see :class:`tvm_intq.core.intmath.SoftmaxInt`)."""
    xi = bb.emit(R.astype(x, "int32"))
    d = bb.emit(R.subtract(bb.emit(R.max(xi, axis=[axis], keepdims=True)), xi))
    e = bb.emit(R.astype(bb.emit(R.take(relax.const(sm.table), d, axis=0, mode="clip")), "int64"))
    total = bb.emit(R.sum(e, axis=[axis], keepdims=True))
    num = bb.emit(
        R.add(
            bb.emit(R.multiply(e, _const(2 * sm.mul, "int64"))),
            bb.emit(R.multiply(total, _const(1 << sm.shift, "int64"))),
        )
    )
    den = bb.emit(R.multiply(total, _const(1 << (sm.shift + 1), "int64")))
    y = bb.emit(R.add(bb.emit(R.floor_divide(num, den)), _const(sm.zero_point, "int64")))
    y = bb.emit(R.clip(y, intmath.QMIN, intmath.QMAX))
    return bb.emit(R.astype(y, "int8"), name)


def lookup2(bb, a, b, table: np.ndarray, name: str):
    """``table[(a + 128) * 256 + (b + 128)]``: any elementwise function of two int8 tensors."""
    ia = bb.emit(R.add(bb.emit(R.astype(a, "int32")), _const(-intmath.QMIN, "int32")))
    ib = bb.emit(R.add(bb.emit(R.astype(b, "int32")), _const(-intmath.QMIN, "int32")))
    idx = bb.emit(R.add(bb.emit(R.multiply(ia, _const(256, "int32"))), ib))
    return bb.emit(
        R.take(relax.const(table.reshape(-1).astype(np.int8)), idx, axis=0, mode="clip"), name
    )


def lookup(bb, x, table: np.ndarray, channel_axis: int | None, name: str):
    """``table[q + 128]`` gathered in the graph; a ``(256, C)`` table is per channel: the
    index is ``q + 128 + 256 c`` into the channel-major flattened table."""
    idx = bb.emit(R.add(bb.emit(R.astype(x, "int32")), _const(-intmath.QMIN, "int32")))
    if table.ndim == 1:
        flat = table
    else:
        channels = table.shape[1]
        shape = [1] * len(x.ty.shape)
        shape[channel_axis] = channels
        offsets = (256 * np.arange(channels, dtype=np.int32)).reshape(shape)
        idx = bb.emit(R.add(idx, relax.const(offsets)))
        flat = np.ascontiguousarray(table.T).reshape(-1)
    return bb.emit(R.take(relax.const(flat.astype(np.int8)), idx, axis=0, mode="clip"), name)
