"""The calibrator interface, the registry, and the two-pass streaming driver.

Calibration runs the float model over the calibration samples and turns what each tensor took
on into a clipping range ``[lo, hi]`` for its quantizer. As in ONNX Runtime's calibrators the
statistics are collected once and reduced per tensor by a small, swappable object; unlike
ONNX Runtime nothing keeps the activations: :func:`collect_ranges` streams batches through

* pass 1 — running min, max and element count per tensor (:class:`TensorStats`), then, only
  for calibrators with ``needs_histogram``,
* pass 2 — a fixed-range histogram over ``[min, max]`` of the whole data, accumulated batch by
  batch (the range is known only after pass 1, hence the second pass),

and asks the :class:`Calibrator` for each tensor's range. The model is whatever ``run``
callable the caller passes: this module does not import TVM.

Adding a calibrator is adding one file with one ``@register``-ed subclass of
:class:`Calibrator` and one import line in ``__init__.py``.
"""

from __future__ import annotations

import inspect
import numbers
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import closing

import numpy as np

from tvm_intq.calibration.data import SampleSet
from tvm_intq.errors import IntqError

#: Every range :meth:`Calibrator.compute_range` returns is at least this wide. Only tensors
#: that are (nearly) all zero need widening: any other range already contains 0 and a value
#: away from it. The widened range stays centred where it was and still contains 0.
MIN_RANGE_WIDTH = 1e-8

DEFAULT_NUM_BINS = 2048


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
class TensorStats:
    """Streaming statistics of one tensor over all calibration samples.

    Pass 1 (:meth:`update_minmax`) keeps ``min``, ``max`` and ``count`` (number of elements
    seen). Pass 2 (:meth:`update_histogram`) accumulates ``hist``, ``num_bins`` counts over the
    fixed range ``[min, max]`` found by pass 1 (``np.histogram`` with that range; bin ``k``
    covers ``bin_edges[k:k+2]``, the last bin includes ``max``). Only the running values are
    held, never the samples.
    """

    def __init__(self, name: str = "", num_bins: int = DEFAULT_NUM_BINS):
        self.name = name
        self.num_bins = int(num_bins)
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.hist: np.ndarray | None = None

    @classmethod
    def from_array(
        cls, x, num_bins: int = DEFAULT_NUM_BINS, histogram: bool = True, name: str = ""
    ) -> TensorStats:
        """Statistics of one in-memory array (both passes at once): for tests and tools."""
        stats = cls(name, num_bins)
        stats.update_minmax(x)
        if histogram:
            stats.update_histogram(x)
        return stats

    def update_minmax(self, x) -> None:
        """Pass 1: fold ``x`` into min, max and count. NaN/Inf show up as non-finite min/max."""
        x = np.asarray(x)
        if x.size == 0:
            return
        lo, hi = float(np.min(x)), float(np.max(x))
        if np.isnan(lo) or np.isnan(hi) or np.isnan(self.min):  # Python's min() would drop a NaN
            self.min = self.max = np.nan
        else:
            self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += int(x.size)

    @property
    def hist_range(self) -> tuple[float, float]:
        """The histogram's range: ``(min, max)``; ``(v - 0.5, v + 0.5)`` if min == max == v
        (what ``np.histogram`` does with an empty range). A range too narrow for ``num_bins``
        distinct float64 edges (min 0 and max a denormal; v = 1e21 where v +- 0.5 == v) is
        widened around its middle to the narrowest that has them."""
        if self.count == 0:
            raise RuntimeError(f"tensor '{self.name}': no values seen in pass 1")
        lo, hi = float(self.min), float(self.max)
        need = 4 * self.num_bins * max(np.spacing(max(abs(lo), abs(hi))), np.finfo(np.float64).tiny)
        if hi <= lo:
            need = max(need, 1.0)
        if hi - lo < need:
            mid = lo + (hi - lo) / 2
            return mid - need / 2, mid + need / 2
        return lo, hi

    @property
    def bin_edges(self) -> np.ndarray:
        lo, hi = self.hist_range
        return np.linspace(lo, hi, self.num_bins + 1)

    def update_histogram(self, x) -> None:
        """Pass 2: add ``x`` to the histogram over ``[min, max]`` (values outside are dropped)."""
        x = np.asarray(x)
        if self.hist is None:
            self.hist = np.zeros(self.num_bins, np.int64)
        if x.size == 0:
            return
        # float64: float32 bin edges underflow for ranges near the denormals.
        counts, _ = np.histogram(
            x.astype(np.float64, copy=False), bins=self.num_bins, range=self.hist_range
        )
        self.hist += counts

    def abs_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """The histogram of ``|x|`` folded from the ``[min, max]`` one: ``(counts, edges)``.

        ``num_bins`` equal bins over ``[0, A]``, ``A = max(|min|, |max|)``, as TensorRT
        histograms ``|x|``. When ``min == 0`` (a ReLU output) or ``max == 0`` this is the
        original histogram (reversed); otherwise counts are spread uniformly within each
        original bin: the new counts are differences of ``F(t) - F(-t)`` at the new edges,
        ``F`` the piecewise-linear cumulative count of the original histogram, so they may be
        fractional.
        """
        if self.hist is None:
            raise RuntimeError(f"tensor '{self.name}': histogram not collected")
        counts = self.hist.astype(np.float64)
        lo, hi = self.hist_range
        if lo == 0:
            return counts, self.bin_edges
        if hi == 0:
            return counts[::-1].copy(), -self.bin_edges[::-1]
        edges = self.bin_edges
        cum = np.concatenate([[0.0], np.cumsum(counts)])
        t = np.linspace(0.0, max(-lo, hi), self.num_bins + 1)
        inside = np.interp(t, edges, cum) - np.interp(-t, edges, cum)
        folded = np.diff(inside)
        folded[folded < cum[-1] * 1e-12] = 0.0  # interpolation round-off, not data
        return folded, t

    def quantile(self, q: float, absolute: bool = False) -> float:
        """The ``q``-quantile (0 <= q <= 1) of the values, or of ``|x|`` if ``absolute``,
        read from the histogram with values spread uniformly within each bin."""
        counts, edges = (
            self.abs_histogram() if absolute else (self.hist.astype(np.float64), self.bin_edges)
        )
        return hist_quantile(counts, edges, q)

    def __repr__(self) -> str:
        h = "" if self.hist is None else f", hist={self.num_bins} bins"
        return (
            f"TensorStats({self.name!r}: min={self.min:g}, max={self.max:g}, count={self.count}{h})"
        )


def hist_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The smallest ``v`` with a fraction ``q`` of the histogram's mass at or below it, with
    counts spread uniformly within each bin (linear interpolation of the cumulative count)."""
    cum = np.concatenate([[0.0], np.cumsum(counts, dtype=np.float64)])
    target = min(max(float(q), 0.0), 1.0) * cum[-1]
    k = int(np.searchsorted(cum, target, side="left"))
    if k == 0:
        return float(edges[0])
    k = min(k, len(counts))
    frac = (target - cum[k - 1]) / (cum[k] - cum[k - 1])  # cum[k-1] < target <= cum[k]
    return float(edges[k - 1] + frac * (edges[k] - edges[k - 1]))


# ---------------------------------------------------------------------------------------------
# Calibrator interface and registry
# ---------------------------------------------------------------------------------------------
class Calibrator(ABC):
    """Turns the statistics of one tensor into its clipping range.

    Subclasses set ``name`` (the registry key) and ``needs_histogram`` (whether
    :func:`collect_ranges` must run the histogram pass), take their options as keyword
    arguments of ``__init__`` and implement :meth:`select_range`. :meth:`compute_range`
    wraps it with what every range must satisfy: finite, ``lo <= 0 <= hi``, symmetric when
    asked, and at least :data:`MIN_RANGE_WIDTH` wide.
    """

    name: str = ""
    needs_histogram: bool = False
    #: Histogram size used by :func:`collect_ranges` (only read if ``needs_histogram``).
    num_bins: int = DEFAULT_NUM_BINS

    def __init__(self, **options):
        if options:
            raise IntqError(
                f"calibrator '{self.name}' has no option {', '.join(repr(k) for k in options)}"
            )

    @abstractmethod
    def select_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        """The calibrator's own choice of ``[lo, hi]`` for a tensor with ``min < max``.

        ``stats.hist`` is filled if ``needs_histogram``. With ``symmetric`` the caller wants
        ``[-T, T]``; returning either that or any ``(lo, hi)`` is fine, :meth:`compute_range`
        widens to ``max(|lo|, |hi|)`` on both sides.
        """

    def compute_range(self, stats: TensorStats, symmetric: bool) -> tuple[float, float]:
        """The clipping range ``[lo, hi]`` of the tensor ``stats`` describes.

        Guarantees ``lo <= 0 <= hi`` (zero is exactly representable), ``lo == -hi`` when
        ``symmetric``, and ``hi - lo >= MIN_RANGE_WIDTH``. A constant tensor (min == max) is
        not clipped: its range is ``[min(v, 0), max(v, 0)]`` whatever the calibrator. An
        all-zero tensor gets ``[-MIN_RANGE_WIDTH / 2, MIN_RANGE_WIDTH / 2]``.
        """
        if stats.count == 0:
            raise IntqError(f"tensor '{stats.name}' has no values to calibrate (empty)")
        if not (np.isfinite(stats.min) and np.isfinite(stats.max)):
            raise IntqError(
                f"tensor '{stats.name}' has non-finite values (min {stats.min}, max {stats.max})"
            )
        if stats.max > stats.min:
            if self.needs_histogram and stats.hist is None:
                raise RuntimeError(
                    f"calibrator '{self.name}' needs the histogram of tensor "
                    f"'{stats.name}', which was not collected"
                )
            lo, hi = (float(v) for v in self.select_range(stats, symmetric))
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
                raise RuntimeError(
                    f"calibrator '{self.name}' chose range [{lo}, {hi}] for tensor '{stats.name}'"
                )
        else:
            lo = hi = float(stats.min)
        return widen_range(lo, hi, symmetric)

    def __repr__(self) -> str:
        opts = ", ".join(
            f"{p}={getattr(self, p)!r}" for p in _option_names(type(self)) if hasattr(self, p)
        )
        return f"{type(self).__name__}({opts})"


def _option_names(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name
        for p in params
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]


def int_option(calibrator: Calibrator, option: str, value, minimum: int = 1) -> int:
    """Check an integer option of ``calibrator``: an IntqError naming both if it is not one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise IntqError(
            f"calibrator '{calibrator.name}': {option} must be an integer, got {value!r}"
        )
    if value < minimum:
        raise IntqError(
            f"calibrator '{calibrator.name}': {option} must be at least {minimum}, got {value}"
        )
    return int(value)


def widen_range(lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    """``[lo, hi]`` made to contain 0, symmetric if asked, and at least MIN_RANGE_WIDTH wide."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        t = max(-lo, hi, MIN_RANGE_WIDTH / 2)
        return -t, t
    width = hi - lo
    if width < MIN_RANGE_WIDTH:
        pad = (MIN_RANGE_WIDTH - width) / 2
        lo, hi = lo - pad, hi + pad
    return lo, hi


CALIBRATORS: dict[str, type[Calibrator]] = {}


def register(cls: type[Calibrator]) -> type[Calibrator]:
    """Class decorator: make ``cls`` available as ``get_calibrator(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)):
        raise TypeError(f"{cls!r} is not a Calibrator subclass")
    if not cls.name or cls.name != cls.name.lower():
        raise ValueError(f"calibrator {cls.__name__} needs a lower-case name, got {cls.name!r}")
    if cls.name in CALIBRATORS and CALIBRATORS[cls.name] is not cls:
        raise ValueError(
            f"calibrator name '{cls.name}' is taken by {CALIBRATORS[cls.name].__name__}"
        )
    CALIBRATORS[cls.name] = cls
    return cls


def get_calibrator(name: str, **options) -> Calibrator:
    """The calibrator registered as ``name`` (case-insensitive), built with ``options``."""
    cls = CALIBRATORS.get(str(name).lower())
    if cls is None:
        raise IntqError(f"unknown calibrator '{name}' (known: {', '.join(sorted(CALIBRATORS))})")
    known = _option_names(cls)
    unknown = [k for k in options if k not in known]
    if unknown:
        raise IntqError(
            f"calibrator '{cls.name}' has no option {', '.join(map(repr, unknown))} "
            f"(its options: {', '.join(known) or 'none'})"
        )
    return cls(**options)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
RunFn = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

#: Pass 1's outputs are kept for pass 2 up to this many bytes (the float model then runs once
#: per batch instead of twice; batches beyond it are run again). light_resnet50 exposes ~45 MB
#: of tensors per sample.
DEFAULT_CACHE_BYTES = 1 << 30


def collect_ranges(
    run: RunFn,
    samples: SampleSet,
    batch_size: int,
    calibrator: Calibrator,
    symmetric: bool,
    progress: bool = True,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> dict[str, tuple[float, float]]:
    """Run the float model over ``samples`` and return ``{tensor name: (lo, hi)}``.

    Parameters
    ----------
    run
        ``run(feeds) -> {tensor name: array}`` evaluates the float model on one batch
        (``feeds`` as from :meth:`SampleSet.batches`) and returns every tensor to calibrate.
        Returned tensors must have the batch on axis 0: the padded rows of the last, partial
        batch are dropped as ``tensor[:valid]``. It must return the same names every call,
        and arrays of its own (they may be kept for pass 2).
    samples, batch_size
        The calibration samples, fed ``batch_size`` at a time.
    calibrator
        Reduces each tensor's statistics to a range. If ``calibrator.needs_histogram`` the
        samples go through twice (min/max, then histograms); otherwise once.
    symmetric
        Passed to :meth:`Calibrator.compute_range`: the caller quantizes symmetrically.
    progress
        Show a tqdm bar per pass on stderr (``calibrate (pass k/n)``), counting samples.
    cache_bytes
        Pass 1's outputs, up to this many bytes, are kept and pass 2 reads them instead of
        running the model again (the same arrays: the ranges do not depend on it).

    Raises
    ------
    IntqError
        The model produced NaN or Inf in a tensor, or an empty tensor (the message names it);
        a tensor's axis 0 is not the batch axis, so padded rows cannot be dropped.
    """
    from tqdm import tqdm

    passes = 2 if calibrator.needs_histogram else 1
    stats: dict[str, TensorStats] = {}
    kept: dict[int, Mapping[str, np.ndarray]] = {}
    room = [cache_bytes if passes == 2 else 0]

    def sweep(k: int):
        bar = tqdm(
            total=samples.num_samples,
            desc=f"calibrate (pass {k}/{passes})",
            unit="sample",
            file=sys.stderr,
            disable=not progress,
        )
        start = 0
        try:
            for index, (feeds, valid) in enumerate(samples.batches(batch_size)):
                outputs = kept.pop(index, None)
                if outputs is None:
                    outputs = run(feeds)
                    if k == 1:
                        size = sum(np.asarray(x).nbytes for x in outputs.values())
                        if size <= room[0]:
                            kept[index] = outputs
                            room[0] -= size
                for name, x in outputs.items():
                    yield name, _real_rows(name, np.asarray(x), valid, batch_size), start
                start += valid
                bar.update(valid)
        finally:
            bar.close()

    with closing(sweep(1)) as values:
        for name, x, start in values:
            st = stats.get(name)
            if st is None:
                st = stats[name] = TensorStats(name, calibrator.num_bins)
            st.update_minmax(x)
            if not (np.isfinite(st.min) and np.isfinite(st.max)):
                what = "NaN" if np.isnan(st.min) else "Inf"
                raise IntqError(
                    f"the float model produced {what} in tensor '{name}' (batch "
                    f"starting at sample {start})"
                )
    for name, st in stats.items():
        if st.count == 0:
            raise IntqError(
                f"the float model produced an empty tensor '{name}'; nothing to calibrate"
            )

    if passes == 2:
        with closing(sweep(2)) as values:
            for name, x, _ in values:
                if name not in stats:
                    raise RuntimeError(f"run() returned tensor '{name}' in pass 2 only")
                stats[name].update_histogram(x)

    return {name: calibrator.compute_range(st, symmetric) for name, st in stats.items()}


def _real_rows(name: str, x: np.ndarray, valid: int, batch_size: int) -> np.ndarray:
    if valid == batch_size:
        return x
    if x.ndim == 0 or x.shape[0] != batch_size:
        raise IntqError(
            f"tensor '{name}' has shape {tuple(x.shape)}: axis 0 is not the batch "
            f"axis ({batch_size}), so the padding of the last partial batch cannot "
            "be dropped; use a number of samples divisible by the batch size"
        )
    return x[:valid]
