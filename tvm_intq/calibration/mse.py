"""MSE calibration: the clipping range whose quantizer loses the least, in squared error."""

from __future__ import annotations

import numpy as np

from tvm_intq.calibration.base import (
    DEFAULT_NUM_BINS,
    Calibrator,
    TensorStats,
    int_option,
    register,
)
from tvm_intq.core import intmath


@register
class MSE(Calibrator):
    """The range ``[lo, hi]`` minimising the expected squared quantization error of the
    tensor, ``sum_k n_k (c_k - Q(c_k))^2 / sum_k n_k`` over the pass-2 histogram (bin centres
    ``c_k`` with counts ``n_k``, as NVIDIA's pytorch-quantization ``mse`` calibrator does),
    where ``Q`` is the int8 quantizer of the range as the schemes build it
    (:func:`tvm_intq.core.intmath.activation_qparams`, S2 Eqs. 18-21: scale, integer zero point,
    clip to [-128, 127]). Clipped values count with their full clipping error, so the search
    trades clipping against resolution on the data itself.

    * ``symmetric``: one threshold ``T``, the range ``[-T, T]``, ``zp = 0``;
    * asymmetric: ``lo`` and ``hi`` searched jointly (``lo`` between ``min(x, 0)`` and 0,
      ``hi`` between 0 and ``max(x, 0)``), with the zero point rounding included in ``Q``,
      so a skewed tensor gets an off-centre range and a ReLU output ``[0, T]``.

    The search is a grid of ``num_candidates`` values per side, evenly spaced from 0 to the
    extreme, then a second grid of as many values within one step of the best; candidates
    with equal error go to the wider range.
    """

    name = "mse"
    needs_histogram = True

    def __init__(self, num_candidates: int = 64, num_bins: int = DEFAULT_NUM_BINS):
        super().__init__()
        self.num_candidates = int_option(self, "num_candidates", num_candidates, 2)
        self.num_bins = int_option(self, "num_bins", num_bins)

    def select_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        edges = stats.bin_edges
        centres = (edges[:-1] + edges[1:]) / 2
        counts = stats.hist.astype(np.float64)
        keep = counts > 0
        centres, counts = centres[keep], counts[keep]
        lo_end, hi_end = min(stats.min, 0.0), max(stats.max, 0.0)
        if symmetric:
            t = max(-lo_end, hi_end)
            lo_end, hi_end = -t, t
        n = self.num_candidates
        lo_c, hi_c = np.linspace(lo_end, 0.0, n + 1)[:-1], np.linspace(hi_end, 0.0, n + 1)[:-1]
        best = self._best(lo_c, hi_c, centres, counts, symmetric)
        step_lo, step_hi = -lo_end / n, hi_end / n
        lo_c = np.clip(np.linspace(best[0] - step_lo, best[0] + step_lo, n + 1), lo_end, 0.0)
        hi_c = np.clip(np.linspace(best[1] + step_hi, best[1] - step_hi, n + 1), 0.0, hi_end)
        return self._best(lo_c, hi_c, centres, counts, symmetric)

    @staticmethod
    def _best(lo_c, hi_c, centres, counts, symmetric) -> tuple[float, float]:
        """The candidate pair with the least error (ties: the first, i.e. the widest listed)."""
        if symmetric:
            pairs = [(-t, t) for t in hi_c if t > 0]
        else:
            pairs = [(lo, hi) for lo in lo_c for hi in hi_c if hi > lo]
        if not pairs:
            return float(lo_c[0]), float(hi_c[0])
        err = quantization_mse(centres, counts, pairs, symmetric)
        lo, hi = pairs[int(np.argmin(err))]
        return float(lo), float(hi)


def quantization_mse(values, weights, ranges, symmetric: bool, chunk: int = 256) -> np.ndarray:
    """``sum w (v - Q(v))^2 / sum w`` for each clipping range in ``ranges``, with ``Q`` the
    int8 quantizer :func:`tvm_intq.core.intmath.activation_qparams` builds for that range."""
    values = np.asarray(values, np.float64)
    weights = np.asarray(weights, np.float64)
    total = max(float(weights.sum()), np.finfo(np.float64).tiny)
    params = [intmath.activation_qparams(lo, hi, symmetric) for lo, hi in ranges]
    out = np.empty(len(params))
    for c0 in range(0, len(params), chunk):
        part = params[c0 : c0 + chunk]
        scale = np.array([p.scale for p in part])[:, None]
        zp = np.array([p.zero_point for p in part])[:, None]
        q = intmath.quantize(values[None, :], scale, zp)
        r = scale * (q.astype(np.float64) - zp)  # dequantize, in float64
        out[c0 : c0 + chunk] = np.square(values[None, :] - r) @ weights / total
    return out
