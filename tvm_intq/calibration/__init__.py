"""Calibration: input sets, the calibrator interface and registry, and the calibrators.

``collect_ranges(run, samples, batch_size, get_calibrator("kl"), symmetric)`` runs the float
model (any ``run(feeds) -> {tensor: array}`` callable) over the samples and returns each
tensor's clipping range. Adding a calibrator is one new module with one ``@register``-ed
class, imported below.
"""

from .base import CALIBRATORS, Calibrator, TensorStats, collect_ranges, get_calibrator, register
from .data import SampleSet, load_image_folder, load_npz

# Calibrators register themselves on import.
from . import kl, minmax, mse, percentile, redistribution  # noqa: E402,F401  isort: skip

__all__ = [
    "SampleSet", "load_npz", "load_image_folder",
    "Calibrator", "TensorStats", "CALIBRATORS", "get_calibrator", "register", "collect_ranges",
]
