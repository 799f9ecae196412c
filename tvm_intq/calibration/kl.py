"""Entropy (KL divergence) calibration, as in TensorRT."""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from .base import DEFAULT_NUM_BINS, Calibrator, TensorStats, int_option, register

#: Count given to an empty bin before normalising (MXNet's and ONNX Runtime's 1e-4, in counts).
SMOOTHING_EPS = 1e-4


@register
class KL(Calibrator):
    """TensorRT's entropy calibration (Migacz 2017, "8-bit inference with TensorRT"). On the
    histogram of ``|x|`` (``num_bins`` bins over ``[0, max|x|]``, folded from the pass-2
    histogram) every candidate ``i`` from ``num_quantized_bins`` to ``num_bins`` keeps the
    first ``i`` bins: the reference ``P`` is ``hist[:i]`` with the clipped outliers
    ``sum(hist[i:])`` added to its last bin; the candidate ``Q`` merges ``hist[:i]`` (without
    the outliers) into ``num_quantized_bins`` groups of ``i // num_quantized_bins`` bins (the
    last group takes the remainder) and spreads each group's count evenly over the group's bins
    that are non-zero in ``P`` (bins empty in ``P`` stay empty). Both are smoothed (empty bins
    get a count of 1e-4, then normalised) and the ``i`` with the least ``KL(P || Q)`` wins,
    giving ``T = (i + 0.5) * bin_width`` (capped at ``max|x|``). The range is ``[-T, T]`` for
    a symmetric quantizer, else ``[max(min, -T), min(max, T)]``, so a ReLU output gets
    ``[0, T]``.
    """

    name = "kl"
    needs_histogram = True

    def __init__(self, num_quantized_bins: int = 128, num_bins: int = DEFAULT_NUM_BINS):
        super().__init__()
        self.num_quantized_bins = int_option(self, "num_quantized_bins", num_quantized_bins, 2)
        self.num_bins = int_option(self, "num_bins", num_bins)

    def threshold(self, stats: TensorStats) -> float:
        """The clipping threshold ``T`` on ``|x|``."""
        counts, edges = stats.abs_histogram()
        i = best_kept_bins(counts, self.num_quantized_bins)
        return float(min((i + 0.5) * (edges[1] - edges[0]), edges[-1]))

    def select_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        t = self.threshold(stats)
        if symmetric:
            return -t, t
        return max(stats.min, -t), min(stats.max, t)


def best_kept_bins(hist: np.ndarray, num_quantized_bins: int, chunk: int = 128) -> int:
    """The number of leading bins ``i`` of ``hist`` whose quantization loses the least
    information, ``argmin_i KL(P_i || Q_i)`` over ``num_quantized_bins <= i <= len(hist)``
    (first minimum); ``len(hist)`` if it has no more bins than ``num_quantized_bins``.

    Vectorised over ``chunk`` candidates at a time: row ``r`` of each 2-D array below is
    candidate ``i = cands[r]`` and column ``k`` is bin ``k``.
    """
    hist = np.asarray(hist, np.float64)
    n, nq = len(hist), num_quantized_bins
    if n <= nq:
        return n
    suffix = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # suffix[i] = sum(hist[i:])
    k = np.arange(n)
    best_i, best_kl = n, np.inf
    for c0 in range(nq, n + 1, chunk):
        cands = np.arange(c0, min(c0 + chunk, n + 1))
        rows = np.arange(len(cands))
        keep = k[None, :] < cands[:, None]
        kept = np.where(keep, hist[None, :], 0.0)          # hist[:i]
        p = kept.copy()
        p[rows, cands - 1] += suffix[cands]                # outliers into the last kept bin
        nonzero = p != 0
        # Q: merge hist[:i] into nq groups, spread each over its bins that are non-zero in P.
        per_group = cands // nq
        group = np.minimum(k[None, :] // per_group[:, None], nq - 1)
        ids = (rows[:, None] * nq + group).ravel()         # bins >= i carry zero weight
        group_sum = np.bincount(ids, weights=kept.ravel(), minlength=len(cands) * nq)
        group_nz = np.bincount(ids, weights=nonzero.ravel(), minlength=len(cands) * nq)
        avg = group_sum / np.maximum(group_nz, 1.0)
        q = np.where(nonzero, avg[ids].reshape(p.shape), 0.0)
        # Smooth: empty kept bins get SMOOTHING_EPS, bins >= i are left out; then normalise.
        p = np.where(keep & (p == 0), SMOOTHING_EPS, p)
        q = np.where(keep & (q == 0), SMOOTHING_EPS, q)
        p /= p.sum(axis=1, keepdims=True)
        q /= q.sum(axis=1, keepdims=True)
        kl = rel_entr(p, q).sum(axis=1)                    # 0 where p == q == 0
        r = int(np.argmin(kl))
        if kl[r] < best_kl:
            best_i, best_kl = int(cands[r]), float(kl[r])
    return best_i
