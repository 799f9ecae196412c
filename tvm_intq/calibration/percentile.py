"""Percentile calibration: clip the rarest values on each side."""

from __future__ import annotations

from tvm_intq.calibration.base import (
    DEFAULT_NUM_BINS,
    Calibrator,
    TensorStats,
    int_option,
    register,
)
from tvm_intq.errors import IntqError


@register
class Percentile(Calibrator):
    """Clip to the central ``percentile`` % of the values, read from the pass-2 histogram with
    values spread uniformly within each bin: ``lo`` is the ``100 - p`` percentile and ``hi``
    the ``p`` percentile of ``x``; for a symmetric quantizer ``T`` is the ``p`` percentile of
    ``|x|`` (the histogram folded onto ``|x|``) and the range is ``[-T, T]``. With the default
    99.99 the rarest 0.01 % on each side saturate, so a few outliers no longer set the scale.
    """

    name = "percentile"
    needs_histogram = True

    def __init__(self, percentile: float = 99.99, num_bins: int = DEFAULT_NUM_BINS):
        super().__init__()
        try:
            self.percentile = float(percentile)
        except (TypeError, ValueError):
            raise IntqError(
                f"calibrator 'percentile': percentile must be a number, got {percentile!r}"
            ) from None
        if not 50.0 <= self.percentile <= 100.0:
            raise IntqError(
                f"calibrator 'percentile': percentile must be in [50, 100], got {percentile}"
            )
        self.num_bins = int_option(self, "num_bins", num_bins)

    def select_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        p = self.percentile / 100.0
        if symmetric:
            t = stats.quantile(p, absolute=True)
            return -t, t
        return stats.quantile(1.0 - p), stats.quantile(p)
