"""intmath held to the paper (S2 = 002_..., Sec. 3.2-3.3): every integer formula against the
real-valued equation it implements, evaluated independently in float64. Pure numpy."""

import functools

import numpy as np
import pytest

from tvm_intq.core import intmath, metrics
from tvm_intq.core.intmath import QMAX, QMIN, QParams

RNG = np.random.default_rng(2024)
TIE_TOL = 1e-6  # "at a tie": the float64 value is this close to k + 0.5


def round_half_up(v):
    return np.floor(np.asarray(v, np.float64) + 0.5)


def near_tie(v, tol=TIE_TOL):
    frac = np.asarray(v, np.float64) - np.floor(v)
    return np.abs(frac - 0.5) < tol


def random_ranges(n, rng=RNG):
    """[lo, hi] pairs of every kind calibration produces: straddling 0, all positive (after a
    ReLU), all negative, tiny and huge."""
    lo = -np.exp(rng.uniform(-8, 6, n)) * rng.integers(0, 2, n)
    hi = np.exp(rng.uniform(-8, 6, n)) * rng.integers(0, 2, n)
    both_zero = (lo == 0) & (hi == 0)
    hi[both_zero] = 1.0
    return list(zip(lo, hi))


# ---------------------------------------------------------------------------------------------
# Quantization parameters (Eqs. 18-22)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lo,hi", random_ranges(200))
def test_activation_qparams_maps_range_ends_to_int8_ends_and_zero_exactly(lo, hi):
    p = intmath.activation_qparams(lo, hi)
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)  # the range is widened to contain 0
    assert p.scale == pytest.approx((hi0 - lo0) / 255, rel=1e-12)  # Eq. 18
    assert isinstance(p.zero_point, int) and QMIN <= p.zero_point <= QMAX
    # Eq. 19: lo -> -128 and hi -> 127 "within rounding" (the zero point is rounded).
    assert abs(lo0 / p.scale + p.zero_point - QMIN) <= 0.5 + 1e-9
    assert abs(hi0 / p.scale + p.zero_point - QMAX) <= 0.5 + 1e-9
    # Real 0 is an integer code: zero padding and ReLU's 0 are exact.
    assert p.quantize(np.zeros(3))[0] == p.zero_point
    assert p.dequantize(np.array([p.zero_point]))[0] == 0.0
    # Every code the range uses dequantizes inside the range (up to half a step).
    assert p.dequantize(np.array([QMIN]))[0] >= lo0 - 0.5 * p.scale * (1 + 1e-6)
    assert p.dequantize(np.array([QMAX]))[0] <= hi0 + 0.5 * p.scale * (1 + 1e-6)


def test_activation_qparams_one_sided_ranges_use_all_codes():
    relu = intmath.activation_qparams(0.0, 6.0)  # after a ReLU6: real 0 is code -128
    assert relu.zero_point == QMIN and relu.scale == pytest.approx(6.0 / 255)
    neg = intmath.activation_qparams(-3.0, 0.0)
    assert neg.zero_point == QMAX and neg.scale == pytest.approx(3.0 / 255)


@pytest.mark.parametrize("lo,hi", random_ranges(50))
def test_symmetric_qparams_zero_point_is_zero(lo, hi):
    p = intmath.activation_qparams(lo, hi, symmetric=True)
    assert p.zero_point == 0
    assert p.scale == pytest.approx(max(-min(lo, 0), max(hi, 0)) / 127, rel=1e-12)


def test_activation_qparams_rejects_nonfinite_and_handles_empty_range():
    with pytest.raises(ValueError, match="not finite"):
        intmath.activation_qparams(-np.inf, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        intmath.activation_qparams(np.nan, 1.0)
    p = intmath.activation_qparams(0.0, 0.0)  # an all-zero tensor: any scale is exact
    assert p.scale > 0 and p.quantize(np.zeros(2)).tolist() == [p.zero_point] * 2


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_weight_qparams_per_channel_max_maps_to_127(axis):
    w = RNG.normal(size=(6, 5, 3, 3)) * np.exp(RNG.uniform(-4, 2, size=(6, 5, 3, 3)))
    qw, sw = intmath.weight_qparams(w, axis)
    other = tuple(i for i in range(4) if i != axis)
    assert qw.dtype == np.int8 and sw.shape == (w.shape[axis],)
    np.testing.assert_allclose(sw, np.max(np.abs(w), axis=other) / 127, rtol=1e-15)  # Eq. 22
    # Each channel's max |w| lands exactly on +-127; nothing exceeds it (no -128).
    np.testing.assert_array_equal(np.max(np.abs(qw.astype(int)), axis=other), 127)
    assert qw.min() >= -127
    shape = [1] * 4
    shape[axis] = -1
    np.testing.assert_array_equal(qw, np.rint(w / sw.reshape(shape)))  # Eq. 4


def test_weight_qparams_zero_channel_and_threshold():
    w = np.zeros((2, 3))
    w[1] = [1.0, -2.0, 0.5]
    qw, sw = intmath.weight_qparams(w, 0)
    assert sw[0] == 1.0 and not qw[0].any()  # an all-zero channel stays 0 with a usable scale
    qw, sw = intmath.weight_qparams(w, 0, threshold=np.array([1.0, 1.0]))  # clipped at thw
    assert sw[1] == pytest.approx(1 / 127) and qw[1].tolist() == [127, -127, 64]


# ---------------------------------------------------------------------------------------------
# conv/dense requantization (Eqs. 6, 11-14)
# ---------------------------------------------------------------------------------------------
def random_layer(rng, k, channels=8, scale_exp=(-3, 1), zp_in=None):
    qw = rng.integers(-127, 128, size=(channels, k)).astype(np.int8)
    sw = np.exp(rng.uniform(-7, -2, channels))
    s_in = float(np.exp(rng.uniform(*scale_exp)))
    zp_in = int(rng.integers(-128, 128)) if zp_in is None else zp_in
    out = QParams(float(np.exp(rng.uniform(-3, 2))), int(rng.integers(-128, 128)))
    bias = rng.normal(size=channels) * 5
    return qw, sw, s_in, zp_in, out, bias


def conv_formula(acc, s_in, zp_in, sw, qw, bias, out, lo=QMIN, hi=QMAX):
    """S2 Eq. 6 in float64: the value the integer requantize rounds (before rounding)."""
    wsum = qw.astype(np.int64).sum(axis=1)
    return s_in * sw / out.scale * (acc - zp_in * wsum) + bias / out.scale + out.zero_point


def targeted_accumulators(rng, n, s_in, zp_in, sw, qw, bias, out):
    """Accumulators whose requantized values spread over (and a bit past) [-128, 127]."""
    wsum = qw.astype(np.int64).sum(axis=1)
    real = s_in * sw / out.scale
    y = rng.uniform(-135, 135, size=(n, len(sw)))
    acc = np.rint((y - bias / out.scale - out.zero_point) / real) + zp_in * wsum
    bound = 128 * np.abs(qw.astype(np.int64)).sum(axis=1)
    return np.clip(acc, -bound, bound).astype(np.int64)


@pytest.mark.parametrize("seed", range(6))
def test_conv_requant_equals_eq6_rounded_half_up(seed):
    rng = np.random.default_rng(seed)
    qw, sw, s_in, zp_in, out, bias = random_layer(rng, k=int(rng.integers(9, 1200)))
    rq = intmath.conv_requant(s_in, zp_in, sw, qw, 0, bias, out, acc_shape_axis=1, acc_ndim=2)
    acc = targeted_accumulators(rng, 10_000 // len(sw), s_in, zp_in, sw, qw, bias, out)
    v = conv_formula(acc, s_in, zp_in, sw, qw, bias, out)
    want = np.clip(round_half_up(v), QMIN, QMAX)
    got = rq.apply(acc).astype(np.int64)
    diff = got - want
    assert np.abs(diff).max() <= 1
    # A 1-unit difference may only sit at a tie of Eq. 6 (MUL carries 30+ significant bits,
    # so |MUL*acc/2^S - real*acc| < |real*acc| * 2^-29, far below TIE_TOL here).
    assert not np.any((diff != 0) & ~near_tie(v))
    # On 10k random accumulators there is no mismatch at all: no value lands that close to
    # a tie (the fraction of ties of width 2 * 1e-7 is ~ 2e-7).
    assert np.count_nonzero(diff) == 0
    inside = (got > QMIN) & (got < QMAX)
    assert inside.mean() > 0.9  # the accumulators exercise the unclipped range


def test_conv_requant_exact_ties_round_half_up():
    # s_in * sw / s_out = 1/2 exactly and offset 0: odd accumulators are exact ties.
    qw = np.ones((1, 4), np.int8)
    rq = intmath.conv_requant(
        1.0, 0, np.array([1.0]), qw, 0, None, QParams(2.0, 0), acc_shape_axis=1, acc_ndim=2
    )
    acc = np.array([[-5], [-3], [-1], [1], [3], [5]])
    assert rq.apply(acc).ravel().tolist() == [
        -2,
        -1,
        0,
        1,
        2,
        3,
    ]  # round half up, like Eq. 6's >> S
    np.testing.assert_array_equal(rq.apply(acc).ravel(), round_half_up(acc.ravel() / 2))


def test_conv_requant_constants_are_per_channel_and_shaped_for_the_accumulator():
    qw, sw, s_in, zp_in, out, bias = random_layer(RNG, k=27, channels=5)
    qw4 = qw.reshape(5, 3, 3, 3)
    rq = intmath.conv_requant(s_in, zp_in, sw, qw4, 0, bias, out)
    assert rq.mul.shape == rq.add.shape == rq.shift.shape == (1, 5, 1, 1)
    # MUL / 2^S ~ s_in sw / s_out (Eqs. 12-13), to at least 30 significant bits.
    real = s_in * sw / out.scale
    np.testing.assert_allclose(rq.mul.ravel() / np.exp2(rq.shift.ravel()), real, rtol=2**-29)
    assert np.all(rq.mul < 2**31) and np.all(rq.mul > 2**29)


@pytest.mark.parametrize("real", [0.3, 0.75, 1e-4, 3.0])
def test_fixed_point_multiplier_has_31_bits(real):
    mul, _, _ = intmath.fixed_point(real, 0.0, 2**20)
    assert 2**30 <= int(mul) < 2**31


@pytest.mark.parametrize("scale_ratio", [1e-9, 1e-4, 1.0, 1e3])
@pytest.mark.parametrize("zp_in", [-128, 127])
def test_conv_requant_never_overflows_int64_at_the_accumulator_bound(scale_ratio, zp_in):
    # K = 3*3*512 = 4608, every weight +-127: the largest accumulator a 3x3x512 conv makes.
    k = 4608
    qw = np.full((3, k), 127, np.int8)
    qw[1] = -127
    qw[2, ::2] = -127
    sw = np.array([1e-3, 2e-3, 5e-2])
    out = QParams(1e-3 / scale_ratio, -7)
    bias = np.array([1e4, -1e4, 0.0]) * out.scale  # large, but representable, offsets
    rq = intmath.conv_requant(1.0, zp_in, sw, qw, 0, bias, out, acc_shape_axis=1, acc_ndim=2)
    bound = 128 * 127 * k
    for acc in (-bound, bound, 0, zp_in * 127 * k):
        exact = [
            ((acc * int(m) + int(a)) >> int(s))
            for m, a, s in zip(rq.mul.ravel(), rq.add.ravel(), rq.shift.ravel())
        ]
        for m, a in zip(rq.mul.ravel(), rq.add.ravel()):
            assert abs(acc * int(m) + int(a)) < 2**63  # Python ints: no wraparound here
        got = rq.apply(np.full((1, 3), acc)).ravel()
        np.testing.assert_array_equal(got, np.clip(exact, QMIN, QMAX))


def test_fixed_point_reduces_shift_for_large_offsets_and_raises_when_impossible():
    mul, add, shift = intmath.fixed_point(0.5, 1e15, 2**20)
    assert int(2**20) * int(mul) + abs(int(add)) < 2**62
    assert ((3 * int(mul) + int(add)) >> int(shift)) == int(round_half_up(1.5 + 1e15))
    with pytest.raises(ValueError, match="int64"):
        intmath.fixed_point(1.0, 0.0, 2.0**63)  # no shift makes acc * MUL fit
    with pytest.raises(ValueError, match="int64"):
        intmath.fixed_point(1.0, 1e19, 1.0)  # the offset alone does not fit
    with pytest.raises(ValueError, match="non-negative"):
        intmath.fixed_point(-0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        intmath.fixed_point(np.nan, 0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        intmath.fixed_point(1.0, np.inf, 1.0)


@pytest.mark.parametrize("seed", range(4))
def test_dense_requant_with_relu_bounds(seed):
    rng = np.random.default_rng(100 + seed)
    qw, sw, s_in, zp_in, out, bias = random_layer(rng, k=64, channels=10)
    lo, hi = intmath.relu_bounds(out, 0.0, 6.0)  # ReLU6 folded into the clip
    w_kn = qw.T  # dense weights are (K, N): output channel on axis 1
    rq = intmath.conv_requant(
        s_in, zp_in, sw, w_kn, 1, bias, out, lo, hi, acc_shape_axis=0, acc_ndim=1
    )
    acc = targeted_accumulators(rng, 500, s_in, zp_in, sw, qw, bias, out)
    v = conv_formula(acc, s_in, zp_in, sw, qw, bias, out)
    np.testing.assert_array_equal(rq.apply(acc), np.clip(round_half_up(v), lo, hi))


def test_relu_bounds():
    p = QParams(0.05, -20)
    assert intmath.relu_bounds(p) == (-20, QMAX)  # ReLU: real 0 is the zero point
    assert intmath.relu_bounds(p, 0.0, 6.0) == (-20, 100)  # ReLU6: 6 / 0.05 - 20
    assert intmath.relu_bounds(p, -1e9, 1e9) == (QMIN, QMAX)
    assert intmath.relu_bounds(p, -np.inf, 1.0) == (QMIN, 0)


# ---------------------------------------------------------------------------------------------
# add, rescale, average pool
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_add_requant_equals_float_formula_on_all_code_pairs(seed):
    rng = np.random.default_rng(200 + seed)
    a, b, o = (
        QParams(float(np.exp(rng.uniform(-5, 1))), int(rng.integers(-128, 128))) for _ in range(3)
    )
    lo, hi = (QMIN, QMAX) if seed % 2 else intmath.relu_bounds(o)  # add (+ relu)
    ar = intmath.add_requant(a, b, o, lo, hi)
    qa, qb = np.meshgrid(np.arange(QMIN, QMAX + 1), np.arange(QMIN, QMAX + 1))
    v = (
        a.scale / o.scale * (qa - a.zero_point)
        + b.scale / o.scale * (qb - b.zero_point)
        + o.zero_point
    )
    got = ar.apply(qa.astype(np.int8), qb.astype(np.int8)).astype(np.int64)
    want = np.clip(round_half_up(v), lo, hi)
    assert not np.any((got != want) & ~near_tie(v))
    assert np.count_nonzero(got != want) == 0


def test_narrowed_add_requant_fits_int32_and_equals_the_int64_one_on_all_code_pairs():
    rng = np.random.default_rng(17)
    qa, qb = (q.ravel() for q in np.meshgrid(np.arange(QMIN, QMAX + 1), np.arange(QMIN, QMAX + 1)))
    narrowed = 0
    for i in range(40):
        a, b, o = (
            QParams(float(np.exp(rng.uniform(-5, 1))), int(rng.integers(-128, 128)))
            for _ in range(3)
        )
        lo, hi = (QMIN, QMAX) if i % 2 else intmath.relu_bounds(o)
        ar = intmath.add_requant(a, b, o, lo, hi, subtract=i % 3 == 0)
        assert not ar.fits_int32()  # 31-bit multipliers: the int64 form
        small = intmath.narrow_add_requant(ar)
        if small != ar:
            narrowed += 1
            assert small.fits_int32() and small.shift < ar.shift
            # every partial sum, computed exactly, is within int32
            y = qa.astype(np.int64) * small.mul_a + qb.astype(np.int64) * small.mul_b
            assert np.abs(y).max() < 2**31 and np.abs(y + small.add).max() < 2**31
            np.testing.assert_array_equal(small.apply(qa, qb), ar.apply(qa, qb))
    assert narrowed >= 36  # ~98 % of random scale triples narrow


def test_product_requant_stays_in_int32_and_within_a_rounding_of_the_real_product():
    """``((Qa - za)(Qb - zb) * MUL + ADD) >> S`` on all 65,536 code pairs: no partial result
    leaves int32, and the output is the rounded real product ``sa*sb/so * P + zo`` but where
    that sits within 1/64 of a step of a rounding boundary (the int32 multiplier's error)."""
    rng = np.random.default_rng(5)
    qa, qb = (q.ravel() for q in np.meshgrid(np.arange(QMIN, QMAX + 1), np.arange(QMIN, QMAX + 1)))
    for _ in range(40):
        a, b, o = (
            QParams(float(np.exp(rng.uniform(-5, 1))), int(rng.integers(-128, 128)))
            for _ in range(3)
        )
        rq = intmath.product_requant(a, b, o)
        p = (qa.astype(np.int64) - a.zero_point) * (qb.astype(np.int64) - b.zero_point)
        assert np.abs(p * rq.mul).max() + abs(int(rq.add)) < 2**31
        m = a.scale * b.scale / o.scale
        real = m * p + o.zero_point
        inside = (real > QMIN - 1) & (real < QMAX + 1)  # outputs the clip leaves alone
        assert np.abs(p * (rq.mul / 2.0**rq.shift - m))[inside].max() < 1 / 64
        exact = np.clip(np.floor(real + 0.5), QMIN, QMAX)
        got = rq.apply(p).astype(np.int64)
        near = np.abs(real + 0.5 - np.rint(real + 0.5)) < 1 / 64
        assert np.all((got == exact) | near)
        assert np.all(np.abs(got - exact) <= 1)


def test_add_requant_ties_and_equal_scales():
    p = QParams(0.1, 3)
    ar = intmath.add_requant(p, p, QParams(0.2, 3))  # (a + b) / 2: half-way sums are ties
    qa = np.array([4, 4, 2, 2], np.int8)
    qb = np.array([3, 4, 3, 0], np.int8)
    # (1 + 0)/2 + 3 = 3.5 -> 4; (1 + 1)/2 + 3 = 4; (-1 + 0)/2 + 3 = 2.5 -> 3; (-1 - 3)/2 + 3 = 1
    assert ar.apply(qa, qb).tolist() == [4, 4, 3, 1]


@pytest.mark.parametrize("seed", range(6))
def test_rescale_requant_equals_float_formula(seed):
    rng = np.random.default_rng(300 + seed)
    p_in = QParams(float(np.exp(rng.uniform(-5, 1))), int(rng.integers(-128, 128)))
    out = QParams(p_in.scale * float(np.exp(rng.uniform(-1.5, 1.5))), int(rng.integers(-128, 128)))
    q = np.arange(QMIN, QMAX + 1)
    rq = intmath.rescale_requant(p_in.scale, p_in.zero_point, out)  # count 1: plain requantize
    v = p_in.scale / out.scale * (q - p_in.zero_point) + out.zero_point
    np.testing.assert_array_equal(rq.apply(q), np.clip(round_half_up(v), QMIN, QMAX))


@pytest.mark.parametrize("count", [4, 9, 49])
def test_rescale_requant_average_pool_with_count_and_divisor(count):
    rng = np.random.default_rng(count)
    p_in = QParams(0.037, 11)
    out = QParams(0.021, -5)
    # Window sums of `count` int8 values (padding holds zp_in); per-position divisors model
    # count_include_pad=False at the borders.
    sums = rng.integers(QMIN, QMAX + 1, size=(4000, count)).sum(axis=1)
    rq = intmath.rescale_requant(p_in.scale, p_in.zero_point, out, count=count)
    v = p_in.scale / (out.scale * count) * (sums - p_in.zero_point * count) + out.zero_point
    got = rq.apply(sums).astype(np.int64)
    assert not np.any((got != np.clip(round_half_up(v), QMIN, QMAX)) & ~near_tie(v))
    divisor = rng.integers(1, count + 1, size=sums.shape)
    rq = intmath.rescale_requant(p_in.scale, p_in.zero_point, out, count=count, divisor=divisor)
    assert rq.mul.shape == sums.shape
    v = p_in.scale / (out.scale * divisor) * (sums - p_in.zero_point * count) + out.zero_point
    got = rq.apply(sums).astype(np.int64)
    want = np.clip(round_half_up(v), QMIN, QMAX)
    # Mismatches only at ties, and here they do occur: with decimal scales the ratio
    # 0.037 / (0.021 * divisor) is rational, so some sums land exactly on k + 0.5, where the
    # rounding direction of the 31-bit MUL decides (either answer is a correct rounding).
    assert not np.any((got != want) & ~near_tie(v))


# ---------------------------------------------------------------------------------------------
# Lookup tables (Eq. 16, Table 1)
# ---------------------------------------------------------------------------------------------
def eq16(fn, inp: QParams, out: QParams):
    """Eq. 16 evaluated directly: ``round(f^-1(F(f(q))))`` in float64 for all 256 codes."""
    q = np.arange(QMIN, QMAX + 1, dtype=np.float64)
    y = fn(inp.scale * (q - inp.zero_point))
    v = y / out.scale + out.zero_point
    return np.clip(np.rint(v), QMIN, QMAX), v


LUT_CASES = {
    "relu": (intmath.ACTIVATIONS["relu"], (-4.0, 3.0), (0.0, 3.0)),
    "relu6": (intmath.ACTIVATIONS["relu6"], (-2.0, 9.0), (0.0, 6.0)),
    "leaky_relu": (
        functools.partial(intmath.ACTIVATIONS["leaky_relu"], alpha=0.1),
        (-5.0, 4.0),
        (-0.5, 4.0),
    ),
    "sigmoid": (intmath.sigmoid, (-8.0, 8.0), (0.0, 1.0)),
    "tanh": (np.tanh, (-3.0, 3.5), (-1.0, 1.0)),
    "hardsigmoid": (intmath.ACTIVATIONS["hardsigmoid"], (-4.0, 4.0), (0.0, 1.0)),
    "hardswish": (intmath.ACTIVATIONS["hardswish"], (-5.0, 5.0), (-0.375, 5.0)),
    "silu": (intmath.ACTIVATIONS["silu"], (-6.0, 6.0), (-0.28, 6.0)),
}


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("name", list(LUT_CASES))
def test_lut_equals_eq16(name, symmetric):
    fn, in_range, out_range = LUT_CASES[name]
    inp = intmath.activation_qparams(*in_range, symmetric=symmetric)
    out = intmath.activation_qparams(*out_range, symmetric=symmetric)
    table = intmath.lut(fn, inp, out)
    assert table.shape == (256,) and table.dtype == np.int8
    want, v = eq16(fn, inp, out)
    # lut evaluates F on float32-dequantized inputs (what the QDQ model computes): it may
    # differ from the float64 Eq. 16 only at a rounding tie.
    diff = table.astype(np.int64) - want
    assert np.abs(diff).max() <= 1
    assert not np.any((diff != 0) & ~near_tie(v, 1e-4))
    # ... and the table is the activation: applied to codes it tracks F within one step.
    q = RNG.integers(QMIN, QMAX + 1, size=1000).astype(np.int8)
    got = out.dequantize(intmath.apply_lut(q, table))
    r = inp.dequantize(q).astype(np.float64)
    exact = np.clip(fn(r), *out.dequantize(np.array([QMIN, QMAX])))
    assert np.abs(got - exact).max() <= 0.5 * out.scale + 1e-6  # + float32 output rounding


def test_lut_relu6_is_a_clip_in_codes():
    inp = QParams(0.05, -10)
    table = intmath.lut(intmath.ACTIVATIONS["relu6"], inp, inp)
    q = np.arange(QMIN, QMAX + 1)
    np.testing.assert_array_equal(table, np.clip(q, -10, -10 + 120))


def test_per_channel_lut_shape_and_values():
    c = 5
    gamma = np.linspace(0.5, 2.0, c).reshape(1, c, 1, 1)
    beta = np.linspace(-1, 1, c).reshape(1, c, 1, 1)
    inp, out = QParams(0.03, 4), QParams(0.05, -3)
    # fn gets the 256 inputs as a vector; the caller gives them the tensor's rank (as
    # lookup_tables.region_function does), so per-channel constants broadcast per channel.
    table = intmath.lut(lambda r: r.reshape(256, 1, 1, 1, 1) * gamma + beta, inp, out)
    assert table.shape == (256, 1, c, 1, 1) and table.dtype == np.int8
    flat = table.reshape(256, c)
    for ch in range(c):
        want, v = eq16(lambda r, ch=ch: r * gamma.ravel()[ch] + beta.ravel()[ch], inp, out)
        assert not np.any((flat[:, ch] != want) & ~near_tie(v, 1e-4))
    # apply_lut with a (256, C) table picks each element's channel.
    q = RNG.integers(QMIN, QMAX + 1, size=(2, c, 3, 3)).astype(np.int8)
    got = intmath.apply_lut(q, flat, channel_axis=1)
    for ch in range(c):
        np.testing.assert_array_equal(got[:, ch], flat[q[:, ch].astype(int) + 128, ch])


def float_softmax(r, axis=-1):
    e = np.exp(r - r.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


SOFTMAX_RANGE = (0.0, 1.0)  # what min/max calibration of a softmax output gives


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n", [2, 10, 100, 1000])
@pytest.mark.parametrize("scale", [0.01, 0.05, 0.2])
def test_softmax_int_within_one_code_of_float_softmax(n, scale, symmetric):
    inp = QParams(scale, 0 if symmetric else int(RNG.integers(-20, 20)))
    out = intmath.activation_qparams(*SOFTMAX_RANGE, symmetric=symmetric)
    q = RNG.integers(QMIN, QMAX + 1, size=(64, n)).astype(np.int8)
    got = intmath.softmax_int(inp, out).apply(q, axis=-1)
    p = float_softmax(inp.dequantize(q).astype(np.float64))
    want = np.clip(np.rint(p / out.scale) + out.zero_point, QMIN, QMAX)
    assert np.abs(got.astype(np.int64) - want).max() <= 1


def test_softmax_int_dequantized_rows_sum_to_one():
    inp = QParams(0.08, 3)
    out = intmath.activation_qparams(*SOFTMAX_RANGE)
    q = RNG.integers(QMIN, QMAX + 1, size=(500, 10)).astype(np.int8)
    got = intmath.softmax_int(inp, out).apply(q, axis=1)
    sums = out.dequantize(got).astype(np.float64).sum(axis=1)
    # each of the 10 outputs is within one code (1/255) of its probability
    assert np.abs(sums - 1.0).max() <= 10 * out.scale
    assert abs(sums.mean() - 1.0) < 0.01
    # the most probable class keeps the largest code
    p = float_softmax(inp.dequantize(q).astype(np.float64), axis=1)
    assert np.all(got[np.arange(500), p.argmax(axis=1)] == got.max(axis=1))


def test_softmax_exp_table_and_saturation():
    inp = QParams(0.1, 0)
    sm = intmath.softmax_int(inp, intmath.activation_qparams(*SOFTMAX_RANGE))
    assert sm.table.shape == (256,) and sm.table.dtype == np.int32 and sm.table[0] == 2**16
    np.testing.assert_array_equal(sm.table, np.rint(2**16 * np.exp(-0.1 * np.arange(256))))
    one_hot = np.array([[127, -128, -128]], np.int8)  # p = 1 -> code 127, p ~ 0 -> -128
    assert sm.apply(one_hot).tolist() == [[127, -128, -128]]
    flat = np.zeros((1, 4), np.int8)  # p = 1/4: 63.75 codes above -128
    assert sm.apply(flat).tolist() == [[-64] * 4]
    # the worst case of the integer division stays in int64: a 16k-wide axis of equal inputs
    wide = np.zeros((1, 2**14), np.int8)
    assert sm.apply(wide).tolist() == [[-128] * 2**14]


# ---------------------------------------------------------------------------------------------
# Quantize/dequantize and the metrics of S2 Eqs. 23-25
# ---------------------------------------------------------------------------------------------
def test_quantize_rounds_half_to_even_and_saturates():
    q = intmath.quantize(np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0]), 1.0, 0)
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert intmath.dequantize(np.array([-128, 0, 127]), 0.5, -3).tolist() == [-62.5, 1.5, 65.0]


def test_metrics_on_known_vectors():
    r = np.array([1.0, 2.0, 3.0])
    q = np.array([1.0, 1.0, 1.0])
    assert metrics.manhattan(r, q) == 3.0
    assert metrics.euclidean(r, q) == pytest.approx(np.sqrt(5.0))
    assert metrics.sqnr_db(r, q) == pytest.approx(10 * np.log10(14 / 5))
    assert metrics.sqnr_db(r, r) == np.inf
    assert metrics.sqnr_db(np.zeros(3), q) == -np.inf
    # 1% uniform relative noise -> 40 dB
    assert metrics.sqnr_db(r, r * 1.01) == pytest.approx(40.0)
    assert metrics.manhattan(np.zeros((2, 2)), np.ones((2, 2))) == 4.0


def test_add_requant_keeps_precision_when_only_one_ratio_is_a_power_of_two():
    # sb/so == 1 exactly, sa/so == 0.6: one shared shift must still give MUL_a its 31 bits.
    a, b, out = QParams(0.03, -128), QParams(0.05, -6), QParams(0.05, -128)
    ar = intmath.add_requant(a, b, out)
    assert ar.shift >= 30
    qa, qb = np.meshgrid(np.arange(QMIN, QMAX + 1), np.arange(QMIN, QMAX + 1))
    want = np.clip(
        np.floor(0.6 * (qa - a.zero_point) + (qb - b.zero_point) + out.zero_point + 0.5), QMIN, QMAX
    )
    assert np.array_equal(ar.apply(qa, qb), want)
