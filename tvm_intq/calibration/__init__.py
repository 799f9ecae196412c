"""Calibration: input sets, the calibrator interface and registry, and the calibrators.

``collect_ranges(run, samples, batch_size, get_calibrator("kl"), symmetric)`` runs the float
model (any ``run(feeds) -> {tensor: array}`` callable) over the samples and returns each
tensor's clipping range. Adding a calibrator is one new module with one ``@register``-ed
class, imported below.
"""

# Calibrators register themselves on import.
from tvm_intq.calibration import kl, minmax, mse, percentile, redistribution  # noqa: F401, I001
from tvm_intq.calibration.base import (
    CALIBRATORS,
    Calibrator,
    TensorStats,
    collect_ranges,
    get_calibrator,
    register,
)
from tvm_intq.calibration.data import SampleSet, load_image_folder, load_npz
from tvm_intq.calibration.pow2_exponent import Pow2Exponent


def for_scheme(calibrator: Calibrator, scheme) -> Calibrator:
    """The calibrator a scheme calibrates with: the user's, or for a scheme of power-of-two
    scales (S3) the user's refined by :class:`Pow2Exponent`."""
    if scheme.exponent_span is None:
        return calibrator
    return Pow2Exponent(calibrator, span=scheme.exponent_span)


__all__ = [
    "SampleSet",
    "load_npz",
    "load_image_folder",
    "Calibrator",
    "TensorStats",
    "CALIBRATORS",
    "get_calibrator",
    "register",
    "collect_ranges",
    "for_scheme",
    "Pow2Exponent",
]
