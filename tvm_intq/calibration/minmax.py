"""Min/max calibration: no clipping."""

from __future__ import annotations

from tvm_intq.calibration.base import Calibrator, TensorStats, register


@register
class MinMax(Calibrator):
    """The range is everything the calibration data reached: ``[min, max]`` of the tensor over
    all samples, or ``[-max|x|, max|x|]`` for a symmetric quantizer. Nothing is clipped, so a
    single outlier stretches the scale for every other value; it needs only pass 1."""

    name = "minmax"
    needs_histogram = False

    def select_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        if symmetric:
            t = max(abs(stats.min), abs(stats.max))
            return -t, t
        return stats.min, stats.max
