"""Shared-exponent search for power-of-two activation scales (S3, INT-SE)."""

from __future__ import annotations

from tvm_intq.calibration.base import Calibrator, TensorStats, int_option
from tvm_intq.core import intmath


class Pow2Exponent(Calibrator):
    """Turns any calibrator's range into S3's power-of-two one.

    The wrapped calibrator's range gives ``t = max(|lo|, |hi|)`` and the initial exponent
    ``s0``, the smallest with ``127 * 2^s0 >= t`` (with ``minmax`` this is S3's exponent from
    the data's extremes). Of the candidates ``s0 - span ... s0 + span`` (S3 Table 2: five),
    the one whose INT-SE quantizer ``clip(round(x / 2^s), -128, 127) * 2^s`` has the least
    mean squared error over the histogram (bin centres weighted by their counts) wins, and the
    range returned is ``[-127 * 2^s, 127 * 2^s]`` (so the scheme maps it back to ``2^s``).

    Not registered: :func:`tvm_intq.calibration.for_scheme` puts it around the calibrator the
    user chose when the scheme has pow2 scales.
    """

    name = "pow2-exponent"
    needs_histogram = True

    def __init__(self, inner: Calibrator, span: int = 2):
        super().__init__()
        self.inner = inner
        self.span = int_option(self, "span", span, 0)
        self.num_bins = inner.num_bins
        #: {tensor name: {exponent: mse}} of the last search per tensor, for reports.
        self.searches: dict[str, dict] = {}

    def select_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        lo, hi = self.inner.compute_range(stats, True)
        s0 = intmath.pow2_minmax_exponent(max(-lo, hi))
        edges = stats.bin_edges
        centres = (edges[:-1] + edges[1:]) / 2
        best, table = intmath.pow2_search(
            centres, s0, stats.hist, span=self.span, qmin=intmath.QMIN, qmax=intmath.QMAX
        )
        self.searches[stats.name] = {"initial": s0, "chosen": best, "mse": table}
        t = intmath.WMAX * 2.0**best
        return -t, t

    def __repr__(self) -> str:
        return f"Pow2Exponent({self.inner!r}, span={self.span})"
