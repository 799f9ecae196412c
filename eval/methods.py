"""The table's columns: each quantization method applied to one :class:`~eval.tasks.Task`.

tvm-intq: every (scheme, calibrator) pair is calibrated from *one* two-pass run of the float
model (:class:`~tvm_intq.scheme_choice.EachRule` reduces the same tensor statistics with each
rule, as ``--scheme auto`` does for its candidates), then each configuration is lowered to
the integer program, built for the host and run on the evaluation set. ``--scheme auto`` and hybrid
precision (``--float-layers auto``) search on the calibration set, without labels: their
target is agreement with the float model (top-1 per output row, or output SQNR for det), so
the evaluation set stays unseen.

ONNX Runtime: ``quantize_static`` QDQ, per channel, int8 activations and weights, MinMax or
Entropy, on the same calibration inputs; run by ONNX Runtime on the CPU. ``quantize_static``
builds its Entropy calibrator with 128 histogram bins and 128 quantized bins: one candidate
threshold, the full range, so its Entropy is MinMax exactly (identical scales, checked on the
bundled model) and there is no option to change it. The Entropy column therefore gives ORT's
own EntropyCalibrater TensorRT's 2048 bins (:data:`ORT_ENTROPY_BINS`).
"""

from __future__ import annotations

import importlib
import time
from unittest import mock

import numpy as np

from tvm_intq import api
from tvm_intq.calibration import SampleSet, get_calibrator
from tvm_intq.compiler.runner import Runner, run_all
from tvm_intq.core import metrics
from tvm_intq.core.schemes import get_scheme
from tvm_intq.frontends import import_model
from tvm_intq.relay_passes import analyze, float_ops
from tvm_intq.search import float_layers, scheme_choice

# column -> (scheme, calibrator). "symmetric-kl" is the S0/S2 baseline (TensorRT-style).
CONFIGS = {
    "percentile": ("hybrid-asym", "percentile"),
    "minmax": ("hybrid-asym", "minmax"),
    "kl": ("hybrid-asym", "kl"),
    "mse": ("hybrid-asym", "mse"),
    "redistribution": ("hybrid-asym", "redistribution"),
    "symmetric-kl": ("symmetric", "kl"),
    "pow2": ("pow2", "percentile"),
}
# --scheme auto chooses among these per layer, each calibrated with the default calibrator.
AUTO = {f"auto:{s}": (s, api.DEFAULT_CALIBRATOR) for s in scheme_choice.CANDIDATES}
ORT_METHODS = ("MinMax", "Entropy")
ORT_ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}
MAX_DROP = 0.5  # hybrid precision: agreement with float within this many points


def float_outputs(task, which: str = "eval") -> np.ndarray:
    """The float model's first output on ``task.eval`` (or ``task.calib``), by ONNX Runtime."""
    return ort_outputs(task.model, getattr(task, which))


def ort_outputs(model, inputs: dict) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    n = len(next(iter(inputs.values())))
    return np.concatenate(
        [sess.run(None, {k: v[i : i + 1] for k, v in inputs.items()})[0] for i in range(n)]
    )


def ort_int8(task, method: str, folder) -> str:
    """``task.model`` quantized by ONNX Runtime (QDQ, per channel, int8, ``method``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(task.calib.values())))
            self.it = iter({k: v[i : i + 1] for k, v in task.calib.items()} for i in range(n))

        def get_next(self):
            return next(self.it, None)

    # The module, not the package's function of the same name.
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    make = ort_quantize.create_calibrator

    def create_calibrator(*args, extra_options=None, **kwargs):  # module docstring: 2048 bins
        if method == "Entropy":
            extra_options = {**ORT_ENTROPY_BINS, **(extra_options or {})}
        return make(*args, extra_options=extra_options or {}, **kwargs)

    out = folder / f"{task.key}.ort.{method}.onnx"
    with mock.patch.object(ort_quantize, "create_calibrator", create_calibrator):
        quantize_static(
            str(task.model),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
        )
    return out


class TvmIntq:
    """tvm-intq on one task: import and calibrate once, then one integer program per column."""

    def __init__(
        self, task, ref_calib: np.ndarray, progress: bool = True, columns=(*CONFIGS, *AUTO)
    ):
        self.task = task
        self.mod, self.info = import_model(task.model)
        self.prepared = api.prepare(self.mod)
        self.calib = SampleSet(task.calib)
        self.eval = SampleSet(task.eval)
        self.progress = progress
        self.ref_calib = ref_calib  # float outputs on the calibration set (search targets)
        rules = {k: {**CONFIGS, **AUTO}[k] for k in columns}  # a test may want only one
        each = scheme_choice.EachRule(
            {k: (get_scheme(s), get_calibrator(c)) for k, (s, c) in rules.items()}
        )
        both = api.calibrate(self.prepared, self.calib, each, progress=progress)
        self.ranges = {k: {t: r[k] for t, r in both.items()} for k in rules}
        self.points = len(analyze(self.prepared["main"]).points)

    def run(self, integer) -> np.ndarray:
        runner = Runner(api.build(integer, "host"), api.input_names(self.prepared))
        return run_all(
            runner, self.eval, api.batch_size(self.prepared), self.progress, "int8 on eval"
        )[0]

    def column(self, key: str) -> tuple[np.ndarray, dict]:
        """``(outputs on the eval set, facts for the table)`` of a configuration of CONFIGS."""
        scheme, _ = CONFIGS[key]
        _, integer = api.lower(
            self.prepared, self.ranges[key], api.QuantConfig(scheme=scheme, integer_only=True)
        )
        return self.run(integer), {"integer_only": not float_ops(integer)}

    def auto(self, search_samples: int) -> tuple[np.ndarray, dict]:
        by_scheme = {k.split(":")[1]: r for k, r in self.ranges.items() if k.startswith("auto:")}
        scheme, ranges, choice = scheme_choice.choose(
            self._search_module(search_samples), by_scheme, self.calib, max_samples=search_samples
        )
        _, integer = api.lower(
            self.prepared, ranges, api.QuantConfig(scheme=scheme, integer_only=True)
        )
        counts = {}
        for s in choice.get("choice", {}).values():
            counts[s] = counts.get(s, 0) + 1
        facts = {"integer_only": not float_ops(integer), "schemes": counts}
        if "kept" in choice:  # what the check on integer programs kept (scheme_choice.choose)
            facts["kept"] = choice["kept"]
            facts["checked_sqnr_db"] = choice["integer_output_sqnr_db"]
        return self.run(integer), facts

    def hybrid(self, search_samples: int, min_sqnr: float | None) -> tuple[np.ndarray, dict]:
        """Hybrid precision from the percentile calibration: the fewest float layers that bring
        the simulated model within MAX_DROP points of float's top-1 (labels: float's own
        argmax per output row, on the calibration set), or to ``min_sqnr`` dB when the task
        has no classification view."""
        few = self.calib.head(search_samples)
        if min_sqnr is None:
            ref = self.ref_calib[: few.num_samples]
            labels = ref.reshape(-1, ref.shape[-1]).argmax(1)
            few = SampleSet(few.arrays, {"labels": labels})
            target = float_layers.Target(max_drop=MAX_DROP)
        else:
            target = float_layers.Target(min_sqnr=min_sqnr)
        sel = float_layers.select_float_layers(
            self._search_module(search_samples),
            self.ranges["percentile"],
            "hybrid-asym",
            few,
            target,
            rank_samples=min(search_samples, 8),
        )
        config = api.QuantConfig(float_layers=sel.names)
        _, integer = api.lower(self.prepared, self.ranges["percentile"], config)
        return self.run(integer), {
            "float_layers": sel.names,
            "num_float_layers": len(sel.names),
            "target": sel.target,
            "integer_only": not float_ops(integer),
        }

    def _search_module(self, samples: int):
        # Batched as many samples as the search runs (a batch of 32 would pad 2 samples to 32).
        return float_layers.search_module(
            self.task.model, None, self.info, self.prepared, batch=min(samples, 32)
        )


def measure(task, out: np.ndarray, ref: np.ndarray, seconds: float, **facts) -> dict:
    """One table cell: the task metrics, output SQNR against float, and how it was made."""
    return {
        **task.score(out),
        "sqnr_db": float(min(metrics.sqnr_db(ref, out), 999.0)),
        "seconds": round(seconds, 1),
        **facts,
    }


def timed(fn, *args):
    t = time.time()
    out, facts = fn(*args)
    return out, facts, time.time() - t
