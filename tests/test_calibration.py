"""Calibrators, streaming statistics and the two-pass driver (no TVM: the model is numpy)."""

import numpy as np
import pytest
from scipy.stats import entropy

from tvm_intq.calibration import (
    CALIBRATORS,
    Calibrator,
    SampleSet,
    TensorStats,
    collect_ranges,
    get_calibrator,
    register,
)
from tvm_intq.calibration.base import MIN_RANGE_WIDTH, hist_quantile
from tvm_intq.calibration.kl import SMOOTHING_EPS, best_kept_bins
from tvm_intq.errors import IntqError

RNG = np.random.default_rng(1234)


def stats_of(x, num_bins=2048):
    return TensorStats.from_array(np.asarray(x), num_bins=num_bins)


def gaussian_with_outliers(n=200_000, n_out=10, out_lo=15.0, out_hi=20.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    idx = rng.choice(n, n_out, replace=False)
    x[idx] = rng.choice([-1.0, 1.0], n_out) * rng.uniform(out_lo, out_hi, n_out)
    return x


# ---------------------------------------------------------------------------------------------
# TensorStats
# ---------------------------------------------------------------------------------------------
def test_stats_streaming_equals_all_at_once():
    x = RNG.normal(0.3, 2.0, size=(37, 5, 4)).astype(np.float32)
    whole = stats_of(x, num_bins=64)
    parts = TensorStats("t", num_bins=64)
    chunks = np.array_split(x, [3, 4, 20, 36])
    for c in chunks:
        parts.update_minmax(c)
    for c in chunks:
        parts.update_histogram(c)
    assert (parts.min, parts.max, parts.count) == (whole.min, whole.max, whole.count)
    assert parts.min == float(x.min()) and parts.max == float(x.max()) and parts.count == x.size
    np.testing.assert_array_equal(parts.hist, whole.hist)
    assert parts.hist.sum() == x.size
    np.testing.assert_array_equal(parts.hist, np.histogram(x, bins=64, range=(x.min(), x.max()))[0])


def test_abs_histogram_folds_mass_onto_abs():
    x = RNG.uniform(-1.0, 3.0, 100_000)
    st = stats_of(x, num_bins=400)
    counts, edges = st.abs_histogram()
    assert len(counts) == 400 and edges[0] == 0.0 and edges[-1] == pytest.approx(3.0, abs=1e-3)
    assert counts.sum() == pytest.approx(x.size)
    # Below 1 both signs contribute (density 2/4), above only the positive side (1/4).
    w = edges[1] - edges[0]
    inner = counts[edges[1:] < 0.95].mean() / (x.size * w)
    outer = counts[edges[:-1] > 1.05].mean() / (x.size * w)
    assert inner == pytest.approx(0.5, rel=0.05) and outer == pytest.approx(0.25, rel=0.05)


def test_abs_histogram_of_relu_output_is_the_histogram():
    x = np.maximum(RNG.standard_normal(10_000), 0.0)
    st = stats_of(x, num_bins=128)
    counts, edges = st.abs_histogram()
    np.testing.assert_array_equal(counts, st.hist)
    np.testing.assert_array_equal(edges, st.bin_edges)


def test_hist_quantile_interpolates_within_bins():
    counts = np.array([10.0, 0.0, 30.0, 60.0])
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    assert hist_quantile(counts, edges, 0.05) == pytest.approx(0.5)
    assert hist_quantile(counts, edges, 0.25) == pytest.approx(2.5)
    assert hist_quantile(counts, edges, 1.0) == pytest.approx(4.0)
    assert hist_quantile(counts, edges, 0.0) == 0.0


# ---------------------------------------------------------------------------------------------
# MinMax
# ---------------------------------------------------------------------------------------------
def test_minmax_exact():
    x = np.array([[-1.5, 0.25], [3.0, 2.0]], np.float32)
    c = get_calibrator("minmax")
    assert c.compute_range(stats_of(x), symmetric=False) == (-1.5, 3.0)
    assert c.compute_range(stats_of(x), symmetric=True) == (-3.0, 3.0)
    assert c.compute_range(stats_of(-x), symmetric=True) == (-3.0, 3.0)


def test_minmax_range_always_contains_zero():
    c = get_calibrator("minmax")
    assert c.compute_range(stats_of([2.0, 5.0]), symmetric=False) == (0.0, 5.0)
    assert c.compute_range(stats_of([-7.0, -2.0]), symmetric=False) == (-7.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Degenerate tensors: every calibrator
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CALIBRATORS))
@pytest.mark.parametrize("symmetric", [False, True])
def test_all_zero_tensor_gets_tiny_valid_range(name, symmetric):
    lo, hi = get_calibrator(name).compute_range(stats_of(np.zeros((4, 3))), symmetric)
    assert lo < 0 < hi and np.isfinite(lo) and np.isfinite(hi)
    assert hi - lo == pytest.approx(MIN_RANGE_WIDTH)
    assert lo == -hi


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_constant_tensor_is_not_clipped(name):
    c = get_calibrator(name)
    assert c.compute_range(stats_of(np.full(100, 2.5)), symmetric=False) == (0.0, 2.5)
    assert c.compute_range(stats_of(np.full(100, 2.5)), symmetric=True) == (-2.5, 2.5)
    assert c.compute_range(stats_of(np.full(100, -4.0)), symmetric=False) == (-4.0, 0.0)


def test_tiny_nonzero_range_is_widened_around_its_centre():
    lo, hi = get_calibrator("minmax").compute_range(stats_of([0.0, 2e-9]), symmetric=False)
    assert hi - lo == pytest.approx(MIN_RANGE_WIDTH)
    assert (lo + hi) / 2 == pytest.approx(1e-9)
    assert lo <= 0 <= hi


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_two_values_do_not_break_histogram_calibrators(name):
    for symmetric in (False, True):
        lo, hi = get_calibrator(name).compute_range(stats_of([0.0] * 50 + [1.0]), symmetric)
        assert lo <= 0 < hi <= 1.0


# ---------------------------------------------------------------------------------------------
# Percentile
# ---------------------------------------------------------------------------------------------
def test_percentile_uniform_is_exact():
    x = np.linspace(-2.0, 8.0, 100_001)
    c = get_calibrator("percentile", percentile=99.0)
    lo, hi = c.compute_range(stats_of(x), symmetric=False)
    assert lo == pytest.approx(-1.9, abs=0.01) and hi == pytest.approx(7.9, abs=0.01)
    # |x| has density 0.2 on [0, 2] and 0.1 on [2, 8]: the top 1% of |x| is [7.9, 8].
    lo, hi = c.compute_range(stats_of(x), symmetric=True)
    assert hi == pytest.approx(7.9, abs=0.01) and lo == -hi


def test_percentile_clips_outlier_keeps_bulk():
    x = RNG.standard_normal(100_000)
    x[123] = 50.0
    lo, hi = get_calibrator("percentile", percentile=99.9).compute_range(stats_of(x), False)
    assert hi < 10.0 and lo > -10.0  # the outlier is clipped
    assert hi == pytest.approx(np.quantile(x, 0.999), rel=0.05)  # the bulk is not
    assert lo == pytest.approx(np.quantile(x, 0.001), rel=0.05)
    lo, hi = get_calibrator("percentile", percentile=99.9).compute_range(stats_of(x), True)
    assert hi == pytest.approx(np.quantile(np.abs(x), 0.999), rel=0.05) and lo == -hi


def test_percentile_of_relu_output_starts_at_zero():
    x = np.maximum(RNG.standard_normal(50_000), 0.0)
    lo, hi = get_calibrator("percentile").compute_range(stats_of(x), symmetric=False)
    assert lo == 0.0 and 3.0 < hi <= x.max()


# ---------------------------------------------------------------------------------------------
# KL
# ---------------------------------------------------------------------------------------------
def reference_kept_bins(hist, nq, eps=SMOOTHING_EPS):
    """Straight loop transcription of the TensorRT/MXNet entropy search."""
    hist = np.asarray(hist, np.float64)
    n = len(hist)
    best, best_kl = n, np.inf
    for i in range(nq, n + 1):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += hist[i:].sum()
        nz = p != 0
        m = i // nq
        q = np.zeros(i)
        for j in range(nq):
            start, stop = j * m, (i if j == nq - 1 else (j + 1) * m)
            cnt = nz[start:stop].sum()
            if cnt:
                q[start:stop] = np.where(nz[start:stop], sliced[start:stop].sum() / cnt, 0.0)
        p = np.where(p == 0, eps, p)
        q = np.where(q == 0, eps, q)
        kl = entropy(p, q)
        if kl < best_kl:
            best, best_kl = i, kl
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_vectorised_search_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    x = np.abs(np.concatenate([rng.standard_normal(5000), rng.uniform(4, 12, 7)]))
    hist = np.histogram(x, bins=160, range=(0, x.max()))[0]
    hist[rng.choice(160, 10)] = 0
    for nq in (8, 16):
        assert best_kept_bins(hist, nq, chunk=7) == reference_kept_bins(hist, nq)


def test_kl_gaussian_with_rare_outliers():
    x = gaussian_with_outliers()
    for symmetric in (False, True):
        lo, hi = get_calibrator("kl").compute_range(stats_of(x), symmetric)
        assert 3.0 < hi < 0.5 * np.abs(x).max()
        assert -0.5 * np.abs(x).max() < lo < -3.0
        if symmetric:
            assert lo == -hi


def test_kl_relu_output_lower_bound_is_zero():
    x = np.maximum(RNG.standard_normal(100_000), 0.0)
    x[:5] = 25.0
    lo, hi = get_calibrator("kl").compute_range(stats_of(x), symmetric=False)
    assert lo == 0.0
    assert 1.5 < hi < 10.0


def test_kl_relu_zeros_do_not_pull_the_threshold_down():
    # The shape that broke the bundled model: a ReLU output is mostly exact zeros (55 % of its
    # first one). 0 is exact on every grid, so adding zeros must not move T; TensorRT's Q
    # smeared them over the first merged group and T fell from 6.0 to 1.8 and 0.9 here.
    tail = np.random.default_rng(0).gamma(2.0, 0.5, 100_000)
    base = get_calibrator("kl").compute_range(stats_of(tail), symmetric=False)[1]
    for zeros in (100_000, 300_000):
        x = np.concatenate([np.zeros(zeros), tail])
        for symmetric in (False, True):
            hi = get_calibrator("kl").compute_range(stats_of(x), symmetric)[1]
            assert hi == pytest.approx(base, rel=0.15)


def test_kl_no_outliers_uniform_keeps_most_of_range():
    x = RNG.uniform(-1.0, 1.0, 200_000)
    lo, hi = get_calibrator("kl").compute_range(stats_of(x), symmetric=True)
    assert 0.9 < hi <= 1.0


def test_kl_is_fast_on_2048_bins():
    import time

    st = stats_of(gaussian_with_outliers(n=50_000))
    t0 = time.perf_counter()
    get_calibrator("kl").compute_range(st, symmetric=False)
    assert time.perf_counter() - t0 < 1.0


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
def test_registry_knows_the_three_and_rejects_unknown():
    assert {"minmax", "percentile", "kl"} <= set(CALIBRATORS)
    with pytest.raises(IntqError, match=r"unknown calibrator 'entropyy'.*kl.*minmax.*percentile"):
        get_calibrator("entropyy")
    assert isinstance(get_calibrator("KL"), CALIBRATORS["kl"])


def test_bad_options_name_the_calibrator_and_option():
    with pytest.raises(IntqError, match=r"'kl' has no option 'percentile'.*num_quantized_bins"):
        get_calibrator("kl", percentile=99.0)
    with pytest.raises(IntqError, match=r"'minmax' has no option 'num_bins'"):
        get_calibrator("minmax", num_bins=10)
    with pytest.raises(IntqError, match=r"'percentile'.*percentile must be in \[50, 100\]"):
        get_calibrator("percentile", percentile=101)
    with pytest.raises(IntqError, match=r"'kl'.*num_quantized_bins must be at least 2"):
        get_calibrator("kl", num_quantized_bins=1)
    with pytest.raises(IntqError, match=r"'kl'.*num_bins must be an integer"):
        get_calibrator("kl", num_bins="many")


def test_register_a_new_calibrator_in_one_class():
    @register
    class Half(Calibrator):
        """Half the min/max range."""

        name = "test-half"

        def select_range(self, stats, symmetric):
            return stats.min / 2, stats.max / 2

    try:
        assert get_calibrator("test-half").compute_range(stats_of([-4.0, 2.0]), False) == (
            -2.0,
            1.0,
        )
    finally:
        del CALIBRATORS["test-half"]


# ---------------------------------------------------------------------------------------------
# collect_ranges
# ---------------------------------------------------------------------------------------------
class CountingModel:
    """relu(x @ w) and x * 2; records every batch it saw."""

    def __init__(self):
        self.w = np.array([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]], np.float32)
        self.calls = []

    def __call__(self, feeds):
        x = feeds["x"]
        self.calls.append(x.shape[0])
        return {"relu": np.maximum(x @ self.w, 0.0), "double": 2.0 * x}


def test_collect_ranges_minmax_matches_whole_data_single_pass():
    x = RNG.standard_normal((10, 3)).astype(np.float32)
    model = CountingModel()
    ranges = collect_ranges(
        model, SampleSet({"x": x}), 4, get_calibrator("minmax"), symmetric=False, progress=False
    )
    assert model.calls == [4, 4, 4]  # one pass, last batch padded to 4
    assert ranges["double"] == (float(2 * x.min()), float(2 * x.max()))
    relu = np.maximum(x @ model.w, 0.0)
    assert ranges["relu"] == (0.0, float(relu.max()))


def test_collect_ranges_two_passes_only_for_histogram_calibrators():
    x = RNG.standard_normal((10, 3)).astype(np.float32)
    model = CountingModel()
    ranges = collect_ranges(
        model,
        SampleSet({"x": x}),
        5,
        get_calibrator("percentile"),
        symmetric=True,
        progress=False,
        cache_bytes=0,
    )
    assert model.calls == [5, 5, 5, 5]
    assert set(ranges) == {"relu", "double"}


@pytest.mark.parametrize("name", ["percentile", "kl", "mse", "redistribution"])
def test_pass_two_reads_kept_outputs_and_ranges_do_not_change(name):
    """Pass 1's outputs kept for pass 2 (within ``cache_bytes``): the model runs once per
    batch, or again only for the batches beyond the budget, and the ranges are identical."""
    x = RNG.standard_normal((10, 3)).astype(np.float32)
    per_batch = 5 * (2 + 3) * 4  # 5 rows x ("relu" 2 + "double" 3 columns) of float32
    got = {}
    for budget, calls in ((0, 4), (1 << 20, 2), (per_batch, 3)):
        model = CountingModel()
        got[budget] = collect_ranges(
            model,
            SampleSet({"x": x}),
            5,
            get_calibrator(name),
            symmetric=False,
            progress=False,
            cache_bytes=budget,
        )
        assert len(model.calls) == calls, (budget, model.calls)
    assert got[0] == got[1 << 20] == got[per_batch]


def test_collect_ranges_drops_padded_rows():
    x = RNG.uniform(-1, 1, (5, 3)).astype(np.float32)
    planted = {}

    def run(feeds):
        out = feeds["x"].copy()
        if out.shape[0] == 4 and np.array_equal(out[1], x[4]):  # the last, padded batch
            out[1:] = 1e6  # only in padding rows
            planted["yes"] = True
        return {"y": out}

    for name in ("minmax", "percentile", "kl"):
        ranges = collect_ranges(
            run, SampleSet({"x": x}), 4, get_calibrator(name), symmetric=False, progress=False
        )
        assert planted.pop("yes")
        assert ranges["y"][1] <= float(x.max()) + 1e-6


def test_collect_ranges_histograms_stream_over_batches():
    x = gaussian_with_outliers(n=6000).reshape(600, 10).astype(np.float32)

    def run(feeds):
        return {"y": feeds["x"]}

    cal = get_calibrator("kl")
    got = collect_ranges(run, SampleSet({"x": x}), 64, cal, symmetric=False, progress=False)
    assert got["y"] == cal.compute_range(stats_of(x), symmetric=False)


def test_collect_ranges_nan_in_model_output_names_tensor():
    x = np.ones((6, 3), np.float32)
    x[3, 1] = 0.0  # the model divides by x: sample 3 (second batch of 2) gives NaN

    def run(feeds):
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"good": feeds["x"], "conv3/out": feeds["x"] * 0.0 / feeds["x"]}

    with pytest.raises(IntqError, match=r"NaN in tensor 'conv3/out'.*sample 2"):
        collect_ranges(run, SampleSet({"x": x}), 2, get_calibrator("minmax"), False, progress=False)


def test_collect_ranges_inf_in_model_output_names_tensor():
    def run(feeds):
        return {"logits": np.log(feeds["x"])}  # log(0) = -inf

    x = np.zeros((2, 1), np.float32)
    with np.errstate(divide="ignore"), pytest.raises(IntqError, match=r"Inf in tensor 'logits'"):
        collect_ranges(run, SampleSet({"x": x}), 2, get_calibrator("kl"), False, progress=False)


def test_collect_ranges_tensor_without_batch_axis_and_padding():
    def run(feeds):
        return {"flat": feeds["x"].reshape(-1)}

    x = np.ones((3, 2), np.float32)
    with pytest.raises(IntqError, match=r"tensor 'flat'.*batch axis"):
        collect_ranges(run, SampleSet({"x": x}), 2, get_calibrator("minmax"), False, progress=False)


def test_collect_ranges_progress_bar_on_stderr(capsys):
    x = np.ones((3, 2), np.float32)
    collect_ranges(
        lambda f: {"y": f["x"]}, SampleSet({"x": x}), 2, get_calibrator("kl"), False, progress=True
    )
    err = capsys.readouterr().err
    assert "calibrate (pass 1/2)" in err and "calibrate (pass 2/2)" in err
    collect_ranges(
        lambda f: {"y": f["x"]}, SampleSet({"x": x}), 2, get_calibrator("kl"), False, progress=False
    )
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "values",
    [
        np.full(10, 1.19e21, np.float32),  # light vgg19: v +- 0.5 == v
        np.array([0.0, 1e-44], np.float32),
    ],
)  # a denormal maximum
def test_histogram_of_extreme_near_constant_tensors(values):
    stats = TensorStats.from_array(values, 2048, histogram=True)
    assert stats.hist.sum() == values.size
    lo, hi = get_calibrator("percentile").compute_range(stats, symmetric=False)
    assert lo <= 0 <= hi and hi >= values.max() * (1 - 1e-6)
