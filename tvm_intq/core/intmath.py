"""Integer arithmetic of the quantized program, in plain numpy: the papers' equations, once.

Everything the graph passes turn into integer constants is computed here, and the same
functions evaluate the integer program in numpy, so the tests hold the compiled TVM code to
this module bit for bit. No TVM import.

Conventions (S2 = ``002_...`` hybrid asymmetric quantization, S1 = ``001_...`` USPIQ):

* An activation tensor ``r`` is stored as int8 ``Q`` with per-tensor scale ``s`` and integer
  zero point ``zp``: ``r = s * (Q - zp)``. S2 writes ``r = s*Q + D`` (Eq. 1) with a real-valued
  offset; its Eq. 19 chooses ``D = -s*zp`` with ``zp`` an integer, so real 0 is exactly
  representable (zero padding stays exact). :func:`activation_qparams` implements Eqs. 18-21.
* A weight tensor is symmetric per output channel: ``w = sw[c] * Qw``, ``sw = thw / 127``
  (Eq. 22), ``Qw`` in [-127, 127].
* A requantization (S1's unified scale; S2 Eqs. 6, 11-14) maps an int32 accumulator to int8 as
  ``Q = clip((acc * MUL + ADD) >> S)`` with one ``MUL``, ``ADD``, ``S`` per output channel,
  evaluated in int64. ``MUL = round(m * 2**S)`` for the real multiplier ``m``; ``ADD`` holds
  the real offset (bias, output zero point) times ``2**S``, the input zero-point correction
  ``-MUL * zp_in * sum(Qw)`` and the rounding constant ``2**(S-1)``, so the arithmetic shift
  rounds half up. Constants are rounded half to even (numpy's ``rint``).
* S3 (``003_...``, INT-SE) stores a tensor as integer data ``D`` and one shared exponent
  ``s``: ``T = D * 2^s`` (:func:`int_se`); ``s`` is chosen by MSE among ``s0 - 2 ... s0 + 2``
  (:func:`pow2_search`). With power-of-two scales every requantize multiplier is a power of
  two and :func:`fixed_point` makes it a pure shift (``MUL = 1``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

QMIN, QMAX = -128, 127  # int8 activations
WMAX = 127  # symmetric int8 weights use [-127, 127] (Eq. 22: 2^(b-1) - 1)
MUL_BITS = 31  # MUL < 2**31: the widest multiplier whose product with an int32 stays in int64
INT64_HEADROOM = 2**62  # |acc * MUL + ADD| must stay below this


# ---------------------------------------------------------------------------------------------
# Quantization parameters
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QParams:
    """Per-tensor activation parameters: ``r = scale * (Q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, r: np.ndarray) -> np.ndarray:
        return quantize(r, self.scale, self.zero_point)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return dequantize(q, self.scale, self.zero_point)


def activation_qparams(lo: float, hi: float, symmetric: bool = False) -> QParams:
    """Scale and zero point for the clipping range [lo, hi] (S2 Eqs. 18-21).

    Asymmetric: ``s = (hi - lo) / (2^b - 1)`` (Eq. 18) and the zero point of Eq. 19,
    ``zp = -round(((2^(b-1) - 1) lo + 2^(b-1) hi) / (hi - lo))``, which maps lo to -128 and hi
    to 127 up to rounding. Symmetric (the papers' baseline): ``s = max(|lo|, |hi|) / 127``,
    ``zp = 0``. The range is widened to contain 0 so that zero (padding, ReLU) is exact.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError(f"clipping range [{lo}, {hi}] is not finite")
    if symmetric:
        t = max(-lo, hi)
        return QParams(scale=_positive(t / WMAX), zero_point=0)
    scale = _positive((hi - lo) / (QMAX - QMIN))
    if hi - lo <= 0:
        return QParams(scale=scale, zero_point=0)
    zp = -int(np.rint(((-QMIN - 1) * lo + (-QMIN) * hi) / (hi - lo)))
    return QParams(scale=scale, zero_point=int(np.clip(zp, QMIN, QMAX)))


def _positive(scale: float) -> float:
    # An all-zero tensor has no range; any positive scale represents it exactly.
    return float(scale) if scale > 0 else 1.0


def weight_qparams(w: np.ndarray, axis: int, threshold: np.ndarray | None = None):
    """Symmetric per-output-channel weight quantization (S2 Eq. 22).

    Returns ``(Qw int8, sw float64[C])`` with ``sw = thw / 127``; ``thw`` defaults to the
    channel's max |w|. ``axis`` is the output-channel axis of ``w``.
    """
    w = np.asarray(w, dtype=np.float64)
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    th = np.max(np.abs(w), axis=other) if threshold is None else np.asarray(threshold, np.float64)
    sw = np.where(th > 0, th / WMAX, 1.0)
    return quantize_weight(w, sw, axis), sw


def quantize_weight(w: np.ndarray, sw: np.ndarray, axis: int) -> np.ndarray:
    """``Qw = clip(round(w / sw), -127, 127)`` with one scale per output channel on ``axis``
    (S2 Eq. 22; S3's INT-SE weights when ``sw`` are powers of two)."""
    w = np.asarray(w, dtype=np.float64)
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    return np.clip(np.rint(w / np.asarray(sw).reshape(shape)), -WMAX, WMAX).astype(np.int8)


def rounding_constant(shift: np.ndarray) -> np.ndarray:
    """``2^(S-1)`` (0 for ``S = 0``): what ``ADD`` holds so that ``>> S`` rounds to nearest."""
    shift = np.asarray(shift, np.int64)
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)


def quantize(r: np.ndarray, scale, zero_point) -> np.ndarray:
    """``Q = clip(round(r / s) + zp)`` (S2 Eq. 2), round half to even like ``relax.quantize``."""
    q = np.rint(np.asarray(r, np.float64) / scale) + zero_point
    return np.clip(q, QMIN, QMAX).astype(np.int8)


def dequantize(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """``r = s * (Q - zp)`` (S2 Eq. 1)."""
    return (scale * (np.asarray(q, np.float64) - zero_point)).astype(np.float32)


def quantize_f32(x: np.ndarray, scale, zero_point, qmin: int = QMIN, qmax: int = QMAX):
    """:func:`quantize` as the compiled program computes it at its float boundaries (a model
    input, the output of an op left float): ``relax.quantize`` lowered by TVM, i.e.
    ``clip(rint(x / s) + zp)`` in float32, rounding half to even. ``scale``/``zero_point``
    broadcast against ``x``; the result is float32 holding integers in ``[qmin, qmax]``."""
    q = np.rint(np.asarray(x, np.float32) / np.asarray(scale, np.float32))
    return np.clip(q + np.asarray(zero_point, np.float32), qmin, qmax)


def dequantize_f32(q: np.ndarray, scale, zero_point) -> np.ndarray:
    """``relax.dequantize`` lowered by TVM: ``(Q - zp)`` in int32, times ``s`` in float32."""
    d = np.asarray(q).astype(np.int32) - np.asarray(zero_point).astype(np.int32)
    return d.astype(np.float32) * np.asarray(scale, np.float32)


# ---------------------------------------------------------------------------------------------
# Power-of-two shared exponents (S3 = ``003_...``, INT-SE)
# ---------------------------------------------------------------------------------------------
#: :func:`pow2_exponent_of` of a value that is not an exact power of two.
NOT_POW2 = np.iinfo(np.int64).min


def pow2_exponent_of(x) -> np.ndarray:
    """``k`` where ``x == 2**k`` exactly, else :data:`NOT_POW2` (elementwise, int64)."""
    x = np.asarray(x, np.float64)
    mant, exp = np.frexp(x)  # x = mant * 2**exp, mant in [0.5, 1)
    return np.where((mant == 0.5) & (x > 0), exp.astype(np.int64) - 1, NOT_POW2)


def pow2_minmax_exponent(t: float, qmax: int = WMAX) -> int:
    """The exponent min/max statistics give (S3's initial shared exponent ``s``): the smallest
    ``e`` with ``qmax * 2^e >= t``, so nothing in ``[-t, t]`` is clipped. 0 for ``t == 0``."""
    t = float(t)
    if not t > 0 or not np.isfinite(t):
        return 0
    e = int(np.ceil(np.log2(t / qmax)))
    return e - 1 if qmax * 2.0 ** (e - 1) >= t else e  # log2 round-off at exact powers


def int_se(x, exponent, qmin: int = -WMAX, qmax: int = WMAX) -> np.ndarray:
    """S3's INT-SE value of ``x``: ``T = D * 2^s`` with the integer data
    ``D = clip(round(x / 2^s), qmin, qmax)`` (round half to even), returned as the real ``T``.
    ``exponent`` broadcasts against ``x``."""
    step = np.exp2(np.asarray(exponent, np.float64))
    return np.clip(np.rint(np.asarray(x, np.float64) / step), qmin, qmax) * step


def pow2_mse(x, exponents, weights=None, qmin: int = -WMAX, qmax: int = WMAX) -> np.ndarray:
    """Mean squared INT-SE error ``sum w (x - T(x))^2 / sum w`` of ``x`` (1-D, ``weights``
    e.g. histogram counts) for each candidate exponent."""
    x = np.asarray(x, np.float64).reshape(1, -1)
    w = np.ones(x.shape[1]) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    e = np.asarray(exponents, np.float64).reshape(-1, 1)
    err = np.square(x - int_se(x, e, qmin, qmax))
    return (err @ w) / max(float(w.sum()), np.finfo(np.float64).tiny)


def pow2_search(
    x,
    center: int,
    weights=None,
    span: int = 2,
    qmin: int = -WMAX,
    qmax: int = WMAX,
    lowest: int | None = None,
    highest: int | None = None,
) -> tuple[int, dict]:
    """S3's shared-exponent choice: of the candidates ``center - span ... center + span``
    (limited to ``[lowest, highest]`` when given), the one with the least :func:`pow2_mse`;
    ties go to the larger exponent (less clipping). Returns ``(exponent, {exponent: mse})``."""
    lo = center - span if lowest is None else max(center - span, lowest)
    hi = center + span if highest is None else min(center + span, highest)
    if hi < lo:  # the window lies outside the allowed interval: its nearest end
        lo = hi = lowest if center - span < lowest else highest
    cands = np.arange(lo, hi + 1)
    mse = pow2_mse(x, cands, weights, qmin, qmax)
    best = int(cands[len(cands) - 1 - int(np.argmin(mse[::-1]))])
    return best, {int(c): float(m) for c, m in zip(cands, mse)}


def accumulator_range(qw: np.ndarray, w_axis: int, q_lo: int = QMIN, q_hi: int = QMAX):
    """Worst-case ``acc = sum_k Q_in[k] * Qw[k, c]`` per output channel ``c`` over all inputs
    ``Q_in`` in ``[q_lo, q_hi]`` (S3's accumulator before truncation): ``(acc_min, acc_max)``
    as int64 arrays, each term taking its own worst end of the input range."""
    w = np.asarray(qw).astype(np.int64)
    other = tuple(i for i in range(w.ndim) if i != w_axis % w.ndim)
    ends = np.stack([w * q_lo, w * q_hi])
    return ends.min(axis=0).sum(axis=other), ends.max(axis=0).sum(axis=other)


def signed_bits(lo: int, hi: int) -> int:
    """Bits of the narrowest two's-complement integer holding every value of ``[lo, hi]``."""
    lo, hi = int(lo), int(hi)
    return max(1 + max(hi, 0).bit_length(), 1 + max(-lo - 1, 0).bit_length(), 1)


# ---------------------------------------------------------------------------------------------
# Requantization: one MUL, ADD, S per output channel
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requant:
    """``Q = clip((acc * mul + add) >> shift, lo, hi)``; arrays broadcast against ``acc``."""

    mul: np.ndarray  # int64
    add: np.ndarray  # int64
    shift: np.ndarray  # int64
    lo: int = QMIN
    hi: int = QMAX

    def apply(self, acc: np.ndarray) -> np.ndarray:
        """The numpy reference of the compiled requantize: int64 multiply, add, arithmetic shift."""
        acc = np.asarray(acc).astype(np.int64)
        y = (acc * self.mul + self.add) >> self.shift
        return np.clip(y, self.lo, self.hi).astype(np.int8)


def fixed_point(
    real: np.ndarray,
    offset: np.ndarray,
    acc_bound: np.ndarray,
    integer_offset: np.ndarray | None = None,
    pure_shift: bool = True,
    headroom: int = INT64_HEADROOM,
):
    """Choose ``S`` and ``MUL = round(real * 2^S)``, ``ADD = round(offset * 2^S) + 2^(S-1)``.

    Approximates ``round(real * acc + offset)`` by ``(acc * MUL + ADD) >> S``. ``S`` is the
    largest shift with ``|MUL| < 2^31`` for which ``acc_bound * |MUL| + |ADD|`` stays below
    ``headroom`` (``2^62``: int64 never overflows for any accumulator with
    ``|acc| <= acc_bound``; ``2^31``: nor does int32).
    ``integer_offset`` (times ``MUL``) is added exactly, in integers: it carries the input
    zero-point correction ``-zp_in * sum(Qw)`` so that it costs no rounding. With
    ``pure_shift`` an exact power-of-two multiplier becomes a pure shift (below).

    Returns ``(MUL, ADD, S)`` as int64 arrays of the broadcast shape.
    """
    real, offset, acc_bound = np.broadcast_arrays(
        np.asarray(real, np.float64),
        np.asarray(offset, np.float64),
        np.asarray(acc_bound, np.float64),
    )
    int_off = (
        np.zeros(real.shape, np.int64)
        if integer_offset is None
        else np.broadcast_to(np.asarray(integer_offset, np.int64), real.shape)
    )
    if np.any(real < 0) or not np.all(np.isfinite(real)) or not np.all(np.isfinite(offset)):
        raise ValueError("requantization multiplier must be finite and non-negative")
    mag = np.where(real > 0, real, 1.0)
    shift = (MUL_BITS - 1 - np.floor(np.log2(mag))).astype(np.int64)  # MUL in [2^30, 2^31)
    shift = np.where(np.rint(mag * np.exp2(shift)) >= 2.0**MUL_BITS, shift - 1, shift)
    # An exact power of two 2^k (S3's shared exponents) is a pure shift: MUL = 1, S = -k; a
    # left shift (k > 0) is MUL = 2^k, S = 0.
    k = pow2_exponent_of(real) if pure_shift else np.full(real.shape, NOT_POW2)
    shift = np.where(k != NOT_POW2, np.maximum(-k, 0), shift)
    shift = np.clip(shift, 0, 62)
    while True:
        mul = np.rint(real * np.exp2(shift)).astype(np.int64)
        add_real = offset * np.exp2(shift) + mul.astype(np.float64) * int_off
        worst = acc_bound * np.abs(mul) + np.abs(add_real) + np.exp2(shift)
        over = worst >= headroom
        if not over.any():
            break
        if np.any(shift[over] == 0):
            raise ValueError(
                "requantization cannot be represented in int64: accumulator or offset too large"
            )
        shift = np.where(over, shift - 1, shift)
    add = np.rint(offset * np.exp2(shift)).astype(np.int64) + mul * int_off
    add = add + rounding_constant(shift)
    return mul, add, shift


def conv_requant(
    s_in: float,
    zp_in: int,
    sw: np.ndarray,
    qw: np.ndarray,
    w_axis: int,
    bias: np.ndarray | None,
    out: QParams,
    lo: int = QMIN,
    hi: int = QMAX,
    acc_shape_axis: int = 1,
    acc_ndim: int = 4,
) -> Requant:
    """Requantization of a conv/dense layer (S2 Eq. 6 and Eqs. 11-14).

    With ``acc = sum(Q_in * Qw)`` over the reduction (input zero-padded with ``zp_in``)::

        Q_out = round(s_in*sw/s_out * (acc - zp_in*sum(Qw)) + bias/s_out + zp_out)

    so ``MUL = round(2^S s_in sw / s_out)`` and ``ADD = round(2^S (bias/s_out + zp_out))
    - MUL zp_in sum(Qw) + 2^(S-1)`` per output channel. ``lo``/``hi`` are the clip bounds (a
    following ReLU/ReLU6/clip is folded into them). ``acc_shape_axis``/``acc_ndim`` say where the
    output channel sits in the accumulator so the constants broadcast against it.
    """
    sw = np.asarray(sw, np.float64)
    other = tuple(i for i in range(qw.ndim) if i != w_axis % qw.ndim)
    wsum = np.sum(qw.astype(np.int64), axis=other)
    k = int(np.prod([qw.shape[i] for i in other]))
    real = s_in * sw / out.scale
    b = np.zeros_like(sw) if bias is None else np.asarray(bias, np.float64)
    offset = b / out.scale + out.zero_point
    acc_bound = k * 128 * np.max(np.abs(qw.astype(np.int64)), axis=other) + np.abs(zp_in * wsum)
    mul, add, shift = fixed_point(real, offset, acc_bound, integer_offset=-zp_in * wsum)
    shape = [1] * acc_ndim
    shape[acc_shape_axis] = -1
    return Requant(mul.reshape(shape), add.reshape(shape), shift.reshape(shape), lo, hi)


def shifted_input_requant(
    rq: Requant, wsum: np.ndarray, wabs: np.ndarray, offset: int = -QMIN
) -> Requant:
    """The same requantize for a layer whose int8 input enters a u8 x s8 dot product (x86 VNNI
    ``vpdpbusd``) as ``Q_in + offset`` (``offset`` 128 maps int8 onto uint8).

    That accumulator is ``acc_u = acc + offset * sum(Qw)`` per output channel, so (as for the
    input zero point in S2 Eq. 6) ``ADD' = ADD - MUL * offset * sum(Qw)`` gives
    ``acc_u * MUL + ADD' == acc * MUL + ADD``: the same output, bit for bit. ``wsum`` and
    ``wabs`` are ``sum(Qw)`` and ``sum(|Qw|)`` per output channel, shaped to broadcast against
    ``rq``'s arrays. Raises ValueError if ``acc_u * MUL + ADD'`` could leave int64.
    """
    mul = np.asarray(rq.mul, np.int64)
    add = np.asarray(rq.add, np.int64) - mul * np.int64(offset) * np.asarray(wsum, np.int64)
    worst = (QMAX - QMIN) * np.asarray(wabs, np.float64) * np.abs(mul.astype(np.float64)) + np.abs(
        add.astype(np.float64)
    )
    if np.any(worst >= INT64_HEADROOM):
        raise ValueError("requantization of the uint8-shifted input cannot be represented in int64")
    return Requant(mul, add, np.asarray(rq.shift, np.int64), rq.lo, rq.hi)


def rescale_requant(
    s_in: float,
    zp_in: int,
    out: QParams,
    count: int = 1,
    divisor: np.ndarray | int | None = None,
    lo: int = QMIN,
    hi: int = QMAX,
) -> Requant:
    """Requantize a sum of ``count`` int8 values with params (s_in, zp_in) to ``out``.

    ``Q_out = round(s_in / (s_out * divisor) * (acc - zp_in * count) + zp_out)``. ``count`` 1
    is a plain requantize: a dequantize/quantize pair merged into one scale-shift (S1's unified
    scale). ``count`` k is an average over a window of k values (padding holds ``zp_in``);
    ``divisor`` (default ``count``) may be a per-position array when padded values are not
    counted.
    """
    divisor = np.asarray(count if divisor is None else divisor, np.float64)
    real = float(s_in) / (out.scale * divisor)
    acc_bound = 256.0 * count
    mul, add, shift = fixed_point(real, out.zero_point, acc_bound, integer_offset=-zp_in * count)
    return Requant(mul, add, shift, lo, hi)


def matmul_requant(
    a: QParams, b: QParams, out: QParams, k: int, lo: int = QMIN, hi: int = QMAX
) -> Requant:
    """Requantization of a product of two activations (attention's ``Q.K^T``, ``attn.V``).

    With ``acc = sum_k (Qa - za)(Qb - zb)`` over the ``k``-long reduction (each factor within
    ``[-255, 255]``): ``Q_out = round(sa*sb/so * acc + zo)``, S2 Eq. 6 with the activation
    ``b`` in the weight's place and both zero points subtracted before the product.
    """
    mul, add, shift = fixed_point(
        a.scale * b.scale / out.scale, out.zero_point, float(k) * 255.0 * 255.0
    )
    return Requant(mul, add, shift, lo, hi)


def product_requant(a: QParams, b: QParams, out: QParams) -> Requant:
    """Requantization of an elementwise product of two activations, ``(Qa - za) * (Qb - zb)``,
    in int32: :func:`matmul_requant`'s ``round(sa*sb/so * P + zo)`` with ``MUL`` as wide as
    int32 leaves room for (``|P|`` below 2^16: ~15 bits, a rounding error under 1/128 of a
    step), so that the whole requantize runs on 32-bit lanes (AVX2, NEON and RVV have no
    64-bit multiply-high or compare)."""
    bound = _centred_bound(a.zero_point) * _centred_bound(b.zero_point)
    mul, add, shift = fixed_point(
        a.scale * b.scale / out.scale, out.zero_point, bound, headroom=2**31
    )
    return Requant(mul, add, shift)


def _centred_bound(zero_point: int) -> int:
    """The largest ``|Q - zp|`` of an int8 code ``Q``."""
    return max(zero_point - QMIN, QMAX - zero_point)


@dataclass(frozen=True)
class AddRequant:
    """Elementwise add (or subtract: ``mul_b < 0``) of two int8 tensors:
    ``(Qa*mul_a + Qb*mul_b + add) >> shift``."""

    mul_a: int
    mul_b: int
    add: int
    shift: int
    lo: int = QMIN
    hi: int = QMAX

    def apply(self, qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
        y = qa.astype(np.int64) * self.mul_a + qb.astype(np.int64) * self.mul_b + self.add
        return np.clip(y >> self.shift, self.lo, self.hi).astype(np.int8)

    def fits_int32(self) -> bool:
        """Every partial sum of :meth:`apply` on int8 codes fits int32."""
        return -QMIN * (abs(self.mul_a) + abs(self.mul_b)) + abs(self.add) < 2**31


def add_requant(
    a: QParams, b: QParams, out: QParams, lo: int = QMIN, hi: int = QMAX, subtract: bool = False
) -> AddRequant:
    """``Q_out = round(sa/so (Qa - za) ± sb/so (Qb - zb) + zo)`` with one shared shift
    (``-`` when ``subtract``, carried by a negative ``mul_b``)."""
    big = max(a.scale, b.scale)
    both_pow2 = NOT_POW2 not in (
        pow2_exponent_of(a.scale / out.scale),
        pow2_exponent_of(b.scale / out.scale),
    )
    if both_pow2:
        big = min(a.scale, b.scale)  # powers of two: the finer input sets the shift, both exact
    # One shift serves both inputs: only when both ratios are powers of two may it be the pure
    # shift of a power of two; otherwise it must leave MUL its full precision.
    _, _, shift = fixed_point(big / out.scale, 0.0, 256.0, pure_shift=both_pow2)
    s = int(shift)
    mul_a = int(np.rint(a.scale / out.scale * 2.0**s))
    mul_b = (-1 if subtract else 1) * int(np.rint(b.scale / out.scale * 2.0**s))
    add = int(np.rint(out.zero_point * 2.0**s)) - mul_a * a.zero_point - mul_b * b.zero_point
    add += (1 << (s - 1)) if s > 0 else 0
    return AddRequant(mul_a, mul_b, add, s, lo, hi)


def narrow_add_requant(ar: AddRequant) -> AddRequant:
    """``ar``, or an :class:`AddRequant` whose arithmetic fits int32 and which gives the same
    output as ``ar`` on every pair of int8 codes (all 65,536 are checked).

    NEON and AVX2 have no 64-bit multiply, arithmetic shift or min/max: in int32 the add runs
    at twice the lanes and a fraction of the instructions. The narrowed constants are ``ar``'s
    with the shift cut to the widest that keeps ``128 (|MA| + |MB|) + |ADD|`` below 2**31
    (MA, MB rounded to ~23 bits), each constant also tried one step either way: the rounding
    of a sum of two terms only changes on the few code pairs within ~1e-5 of a half, and one
    of these nearby constants almost always keeps every pair (about 98 % of random scale
    triples; otherwise ``ar`` itself, in int64)."""
    if ar.fits_int32():
        return ar
    qa, qb = (
        q.astype(np.int64).ravel()
        for q in np.meshgrid(np.arange(QMIN, QMAX + 1), np.arange(QMIN, QMAX + 1))
    )
    want = ar.apply(qa, qb)
    for cut in range(1, ar.shift):
        s = ar.shift - cut
        mul_a, mul_b = int(np.rint(ar.mul_a / 2.0**cut)), int(np.rint(ar.mul_b / 2.0**cut))
        add = int(np.rint((ar.add - (1 << (ar.shift - 1))) / 2.0**cut)) + (1 << (s - 1))
        if not AddRequant(abs(mul_a) + 1, abs(mul_b) + 1, abs(add) + 1, s).fits_int32():
            continue  # the candidates one step away must fit too
        for da, db, dd in itertools.product((0, -1, 1), (0, -1, 1), (0, -1, 1)):
            cand = AddRequant(mul_a + da, mul_b + db, add + dd, s, ar.lo, ar.hi)
            if cand.fits_int32() and np.array_equal(cand.apply(qa, qb), want):
                return cand
        break  # a smaller shift is only less precise
    return ar


def relu_bounds(out: QParams, lo_real: float = 0.0, hi_real: float = np.inf) -> tuple[int, int]:
    """Integer clip bounds for a ReLU / ReLU6 / clip(lo, hi) folded into a requantize."""
    lo = (
        QMIN
        if not np.isfinite(lo_real)
        else int(np.clip(quantize(lo_real, out.scale, out.zero_point), QMIN, QMAX))
    )
    hi = (
        QMAX
        if not np.isfinite(hi_real)
        else int(np.clip(quantize(hi_real, out.scale, out.zero_point), QMIN, QMAX))
    )
    return max(lo, QMIN), min(hi, QMAX)


# ---------------------------------------------------------------------------------------------
# Lookup tables for nonlinear layers (S2 Eq. 16, Table 1)
# ---------------------------------------------------------------------------------------------
def lut(fn, inp: QParams, out: QParams) -> np.ndarray:
    """The table ``T[q + 128] = round(f^-1(F(f(q))))`` of S2 Eq. 16, for all 256 int8 ``q``.

    ``fn`` maps the 256 dequantized inputs (a ``(256,)`` vector) to real outputs whose first
    axis is the input; a function that reshapes its input to broadcast against per-channel
    constants returns further axes, one table per channel (e.g. a BatchNorm affine that no
    conv precedes). Returns int8 of shape ``(256, ...)``.
    """
    q = np.arange(QMIN, QMAX + 1, dtype=np.int64)
    with np.errstate(all="ignore"):  # log(0), x/0: saturated by _table
        return _table(fn(inp.dequantize(q).astype(np.float64)), out)


def _table(y, out: QParams) -> np.ndarray:
    # log(0), x/0 and the like: saturate instead of producing NaN codes.
    y = np.nan_to_num(
        np.asarray(y, np.float64),
        nan=0.0,
        posinf=np.finfo(np.float32).max,
        neginf=np.finfo(np.float32).min,
    )
    return out.quantize(y)


def lut2(fn, a: QParams, b: QParams, out: QParams) -> np.ndarray:
    """Eq. 16 for a function of two int8 tensors: ``T[i, j] = Q_out(F(R_a(i), R_b(j)))``,
    a ``(256, 256)`` table indexed by ``(qa + 128, qb + 128)``."""
    q = np.arange(QMIN, QMAX + 1, dtype=np.int64)
    ra = a.dequantize(q).astype(np.float64)[:, None]
    rb = b.dequantize(q).astype(np.float64)[None, :]
    with np.errstate(all="ignore"):
        return _table(fn(ra, rb), out)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# Table 1 of S2 plus the activations users meet today. Each maps real -> real.
ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x, alpha=0.01: np.where(x >= 0, x, alpha * x),
    "sigmoid": sigmoid,
    "tanh": np.tanh,
    "hardsigmoid": lambda x, alpha=0.2, beta=0.5: np.clip(alpha * x + beta, 0.0, 1.0),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda x: x * sigmoid(x),
}


def apply_lut(q: np.ndarray, table: np.ndarray, channel_axis: int | None = None) -> np.ndarray:
    """Gather ``table[q + 128]``; a ``(256, C)`` table is indexed per channel on
    ``channel_axis``."""
    idx = q.astype(np.int64) - QMIN
    if table.ndim == 1:
        return table[idx]
    shape = [1] * q.ndim
    shape[channel_axis] = -1
    return table[idx, np.arange(table.shape[1]).reshape(shape)]


# ---------------------------------------------------------------------------------------------
# Softmax in integers
# ---------------------------------------------------------------------------------------------
EXP_BITS = 16


@dataclass(frozen=True)
class SoftmaxInt:
    """Integer softmax: ``E = table[max(Q) - Q]`` with ``table[d] = round(2^16 exp(-s_in d))``,
    then ``Q_out = round(E / sum(E) / s_out) + zp_out`` as the integer division
    ``floor((2 E MUL + sum(E) 2^S) / (sum(E) 2^(S+1))) + zp_out`` with ``MUL = round(2^S / s_out)``.
    """

    table: np.ndarray  # int32[256]
    mul: int
    shift: int
    zero_point: int

    def apply(self, q: np.ndarray, axis: int = -1) -> np.ndarray:
        q = q.astype(np.int64)
        e = self.table[np.max(q, axis=axis, keepdims=True) - q].astype(np.int64)
        total = np.sum(e, axis=axis, keepdims=True)
        y = (e * (2 * self.mul) + total * (1 << self.shift)) // (total * (1 << (self.shift + 1)))
        return np.clip(y + self.zero_point, QMIN, QMAX).astype(np.int8)


def softmax_int(inp: QParams, out: QParams) -> SoftmaxInt:
    """Constants of the integer softmax from input and (calibrated) output parameters."""
    d = np.arange(0, QMAX - QMIN + 1, dtype=np.float64)
    table = np.rint(np.exp(-inp.scale * d) * 2**EXP_BITS).astype(np.int32)
    # MUL < 2^31 keeps 2*E*MUL below 2^48; the sum of up to 2^14 exps times 2^S stays in int64.
    shift = int(np.clip(np.floor(MUL_BITS - 1 - np.log2(1.0 / out.scale)), 0, 30))
    return SoftmaxInt(table, int(np.rint(2.0**shift / out.scale)), shift, out.zero_point)


def window_counts(in_shape, pool_size, strides, dilation, padding) -> np.ndarray:
    """How many non-padded input positions each output window of a pool covers (the divisor
    of an average pool that does not count padding). ``padding`` is ``[before..., after...]``
    over the spatial axes ``in_shape``."""
    n = len(in_shape)
    pad, k, strides, dil = ([int(v) for v in a] for a in (padding, pool_size, strides, dilation))
    ones = np.pad(np.ones(in_shape, np.int64), [(pad[i], pad[i + n]) for i in range(n)])
    span = [(k[i] - 1) * dil[i] + 1 for i in range(n)]
    win = np.lib.stride_tricks.sliding_window_view(ones, span)
    win = win[tuple(slice(None, None, s) for s in strides)]
    win = win[(Ellipsis,) + tuple(slice(None, None, d) for d in dil)]
    return win.sum(axis=tuple(range(n, 2 * n)))


def affine_requant(
    inp: QParams, a: np.ndarray, b: np.ndarray, out: QParams, lo: int = QMIN, hi: int = QMAX
) -> Requant:
    """Requantization of an elementwise affine function ``y = a * x + b`` of an int8 tensor,
    with constants ``a``, ``b`` that broadcast against it (any shape: one per element, per
    channel, per anchor): the multiply/add/subtract chains of a detection head's box decoding
    (``(anchors - d) * stride``) and a BatchNorm affine.

    ``Q_out = round(m * Q_in + c)`` with ``m = s_in a / s_out`` and
    ``c = b / s_out + zp_out - m zp_in``: ``MUL = ±round(|m| 2^S)`` (the sign of ``a``),
    ``ADD = round(2^S (b / s_out + zp_out)) - MUL zp_in + 2^(S-1)``, so the input zero point
    costs no rounding (S2 Eqs. 11-14 with an elementwise multiplier).
    """
    a, b = _least_shape(np.asarray(a, np.float64)), _least_shape(np.asarray(b, np.float64))
    m = float(inp.scale) * a / out.scale
    offset = b / out.scale + out.zero_point
    # One shift for all (the largest |m| keeps 31 bits): MUL then varies only where ``a``
    # does, and a constant of one value per anchor costs one int64 (ADD), not three.
    _, _, shifts = fixed_point(np.abs(m), offset, 256.0, pure_shift=False)
    shift = np.int64(shifts.min())
    mul = np.rint(np.abs(m) * np.exp2(shift)).astype(np.int64)
    mul = np.where(m < 0, -mul, mul)
    add = np.rint(offset * np.exp2(shift)).astype(np.int64) - mul * int(inp.zero_point)
    add = add + rounding_constant(shift)
    return Requant(mul, add, shift.reshape((1,) * max(mul.ndim, add.ndim)), lo, hi)


def _least_shape(x: np.ndarray) -> np.ndarray:
    """``x`` with every axis along which it does not vary cut to length 1."""
    for axis in range(x.ndim):
        if x.shape[axis] > 1 and np.all(x == x.take([0], axis=axis)):
            x = x.take([0], axis=axis)
    return x
