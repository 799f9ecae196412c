"""Activation redistribution (S2 Algorithm 2, Fig. 4): Box-Cox to a Gaussian-like shape,
KL threshold there, and back to an asymmetric range."""

from __future__ import annotations

import numpy as np

from tvm_intq.calibration.base import (
    DEFAULT_NUM_BINS,
    Calibrator,
    TensorStats,
    int_option,
    register,
)
from tvm_intq.calibration.kl import KL

#: Box-Cox exponents are searched in [-LAMBDA_MAX, LAMBDA_MAX]: beyond, x^lambda over- or
#: underflows for data that spans a few decades, and the shape no longer changes usefully.
LAMBDA_MAX = 4.0


@register
class Redistribution(Calibrator):
    """S2's activation redistribution (Algorithm 2, Fig. 4), on the pass-2 histogram.

    1. **Shift by c to positive.** ``u = (x + c) / R`` with ``R = max - min`` and
       ``c = -min + offset * R``: ``u`` lies in ``[offset, 1 + offset]``. Box-Cox needs
       ``u > 0``; dividing by ``R`` changes neither the fitted shape (the Box-Cox maximum
       likelihood ``lambda`` is scale invariant) nor the result, and keeps ``u^lambda`` finite.
       S2 does not say how far above 0 to shift; ``offset`` sets it. Near 0 Box-Cox with
       ``lambda < 1`` stretches like a logarithm, so a tiny offset throws the minimum far out
       (1/2048: a tail to z = -130 on a leaky-relu output) and a large one leaves too little
       curvature to reshape anything (0.5 and 1 clip the bundled model's input to a sliver).
       0.01 gave the least quantization error over the bundled model's 16 tensors.
    2. **Box-Cox to a Gaussian-like shape.** ``y = (u^lambda - 1) / lambda`` (``log u`` for
       ``lambda = 0``, :func:`scipy.special.boxcox`), with ``lambda`` the maximum of the
       Box-Cox log-likelihood (what :func:`scipy.stats.boxcox_normmax` maximises,
       ``method="mle"``) written for weighted data: the histogram's bin centres weighted by
       their counts, ``llf = (lambda - 1) sum n log u - N/2 log var_n(y)``. The histogram is
       all calibration keeps (nothing stores the samples), and a weighted fit is exact for it
       and deterministic, where drawing a sample from it would add noise.
    3. **Shift by d to symmetric.** ``z = y + d`` with ``d = -mean_n(y)``.
    4. **KL threshold.** The histogram carried to ``z`` (each bin's count spread uniformly
       over its image, re-binned to ``num_bins`` equal bins) goes through TensorRT's entropy
       calibration (:class:`~tvm_intq.calibration.kl.KL`, the ``kl`` calibrator's own code)
       giving ``[-T, T]``: positive and negative sides now weigh the same.
    5. **Inverse Box-Cox** of ``-T - d`` and ``T - d``, undoing step 1, gives the asymmetric
       range ``[min_in, max_in]``, kept inside ``[min, max]``.

    For data on one side of zero, the bin next to zero takes no part in steps 2-4 (a point
    mass there, ReLU's zeros, is exact at any threshold and would otherwise set it).

    Degenerate data stays finite: a histogram with mass in a single bin keeps ``[min, max]``;
    a fit that fails or is not finite uses ``lambda = 1`` (a plain shift); an inverse outside
    Box-Cox's domain is taken as the data's end.
    """

    name = "redistribution"
    needs_histogram = True

    def __init__(
        self, offset: float = 0.01, num_quantized_bins: int = 128, num_bins: int = DEFAULT_NUM_BINS
    ):
        super().__init__()
        self.offset = float(offset)
        if not self.offset > 0:
            from tvm_intq.errors import IntqError

            raise IntqError(f"calibrator 'redistribution': offset must be positive, got {offset!r}")
        self.num_quantized_bins = int_option(self, "num_quantized_bins", num_quantized_bins, 2)
        self.num_bins = int_option(self, "num_bins", num_bins)
        #: {tensor name: (lambda, c, d, T)} of the last call per tensor, for reports and tests.
        self.fits: dict[str, tuple[float, float, float, float]] = {}

    def select_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        from scipy import special  # loaded when the calibrator runs (tvm-intq --help < 1 s)

        counts = stats.hist.astype(np.float64)
        # Data on one side of zero (ReLU, sigmoid, softmax outputs): the bin next to zero is
        # left out of the fit and of KL. Every range keeps 0 (lo <= 0 <= hi), so its values are
        # quantized within one bin width whatever the threshold: they say nothing about where
        # to clip. Left in, ReLU's zeros (83 % of a det-model tensor) are a point mass Box-Cox
        # cannot reshape: d centres z on it and KL clipped that tensor to 0.3 % of its range.
        if stats.min >= 0:
            counts[0] = 0.0
        elif stats.max <= 0:
            counts[-1] = 0.0
        if np.count_nonzero(counts) < 2:
            return stats.min, stats.max
        x_lo, x_hi = stats.min, stats.max
        span = x_hi - x_lo
        c = -x_lo + self.offset * span
        edges = stats.bin_edges
        # Step 1: u = (x + c) / R; the outermost edges are the data's ends.
        u_edges = (np.clip(edges, x_lo, x_hi) + c) / span
        u_centres = (u_edges[:-1] + u_edges[1:]) / 2
        lam = boxcox_normmax_weighted(u_centres, counts)
        # Step 2-3: y = BC(u), z = y + d with d = -mean(y).
        y_edges = special.boxcox(u_edges, lam)
        y_centres = special.boxcox(u_centres, lam)
        d = -float(np.average(y_centres, weights=counts))
        z_edges = y_edges + d
        # Step 4: KL on the histogram carried to z.
        zstats = rebinned_stats(z_edges, counts, self.num_bins, stats.name)
        t = KL(self.num_quantized_bins, self.num_bins).threshold(zstats)
        self.fits[stats.name] = (float(lam), float(c), float(d), float(t))
        # Step 5: back through BC^-1 and the shift.
        lo = _inverse(-t - d, lam, span, c, x_lo, x_hi)
        hi = _inverse(t - d, lam, span, c, x_lo, x_hi)
        return min(lo, hi), max(lo, hi)

    def __repr__(self) -> str:
        return (
            f"Redistribution(offset={self.offset!r}, num_quantized_bins="
            f"{self.num_quantized_bins!r}, num_bins={self.num_bins!r})"
        )


def boxcox_llf_weighted(lam: float, x: np.ndarray, w: np.ndarray) -> float:
    """Box-Cox log-likelihood of the values ``x > 0`` with weights ``w`` (counts):
    ``(lambda - 1) sum w log x - N/2 log(sum w (y - mean)^2 / N)``, ``N = sum w``,
    ``y = boxcox(x, lambda)``; with unit weights it is :func:`scipy.stats.boxcox_llf`."""
    n = float(np.sum(w))
    logx = np.log(x)
    # The variance of y through logs, as scipy does, so large |lambda| cannot overflow:
    # var(y) = var(x^lambda) / lambda^2, and x^lambda = exp(lambda log x) scaled by its max.
    if abs(lam) < 1e-12:
        y = logx
        var = np.average(np.square(y - np.average(y, weights=w)), weights=w)
        logvar = np.log(var) if var > 0 else -np.inf
    else:
        a = lam * logx
        m = np.max(a)
        v = np.exp(a - m)
        var = np.average(np.square(v - np.average(v, weights=w)), weights=w)
        logvar = (np.log(var) + 2 * m - 2 * np.log(abs(lam))) if var > 0 else -np.inf
    return float((lam - 1.0) * np.dot(w, logx) - n / 2.0 * logvar)


def boxcox_normmax_weighted(x: np.ndarray, w: np.ndarray) -> float:
    """The ``lambda`` in ``[-LAMBDA_MAX, LAMBDA_MAX]`` maximising
    :func:`boxcox_llf_weighted` (1.0 when the optimiser fails or the data has no spread)."""
    from scipy import optimize  # loaded when the calibrator runs (tvm-intq --help < 1 s)

    keep = w > 0
    x, w = np.asarray(x, np.float64)[keep], np.asarray(w, np.float64)[keep]
    if len(x) < 2 or np.ptp(x) <= 0:
        return 1.0
    with np.errstate(all="ignore"):
        res = optimize.minimize_scalar(
            lambda lam: -boxcox_llf_weighted(lam, x, w),
            bounds=(-LAMBDA_MAX, LAMBDA_MAX),
            method="bounded",
            options={"xatol": 1e-6},
        )
    lam = float(res.x)
    if not np.isfinite(lam) or not np.isfinite(res.fun):
        return 1.0
    return lam


def rebinned_stats(
    edges: np.ndarray, counts: np.ndarray, num_bins: int, name: str = ""
) -> TensorStats:
    """Statistics of a histogram with increasing, uneven ``edges``, re-binned to ``num_bins``
    equal bins over ``[edges[0], edges[-1]]`` (each count spread uniformly over its bin: the
    cumulative count is interpolated at the new edges; counts may become fractional)."""
    edges = np.asarray(edges, np.float64)
    keep = np.concatenate([[True], np.diff(edges) > 0])  # drop zero-width bins' left edges
    cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    edges, cum = edges[keep], cum[keep]
    st = TensorStats(name, num_bins)
    st.min, st.max, st.count = float(edges[0]), float(edges[-1]), int(round(cum[-1]))
    new = st.bin_edges
    hist = np.diff(np.interp(new, edges, cum))
    hist[hist < cum[-1] * 1e-12] = 0.0
    st.hist = hist
    return st


def _inverse(z: float, lam: float, span: float, c: float, x_lo: float, x_hi: float) -> float:
    """``x = R * BC^-1(y) - c`` clipped to ``[x_lo, x_hi]``; outside BC's range -> an end."""
    from scipy import special  # loaded when the calibrator runs (tvm-intq --help < 1 s)

    with np.errstate(all="ignore"):
        u = float(special.inv_boxcox(z, lam))
    if not np.isfinite(u):
        # 1 + lambda*y <= 0: below (lambda > 0) or above (lambda < 0) all BC can reach.
        return x_lo if lam > 0 else x_hi
    return float(np.clip(u * span - c, x_lo, x_hi))
