"""The Python API: the whole ``tvm-intq compile`` job in one call (:func:`compile_onnx`), and
the flow's steps for a user with a Relax module of their own (re-exported from
:mod:`tvm_intq.compiler.steps`).

    import -> prepare -> calibrate -> annotate -> fold to integer -> build -> run/evaluate
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tvm

from tvm_intq.calibration import SampleSet, load_npz
from tvm_intq.compiler.phases import Phases
from tvm_intq.compiler.runner import check_inputs
from tvm_intq.compiler.steps import (
    batch_size,
    build,
    calibrate,
    input_names,
    lower,
    prepare,
    quantize,
    reuse_builds,
)
from tvm_intq.core.config import DEFAULT_CALIBRATOR, QuantConfig, parse_float_layers
from tvm_intq.evaluation.evaluate import describe, evaluate
from tvm_intq.frontends import ModelInfo, import_model
from tvm_intq.relay_passes import analyze
from tvm_intq.search import float_layers, scheme_choice
from tvm_intq.search.budget import Budget

__all__ = [
    "COMPILE_PHASES",
    "Compiled",
    "Phases",
    "DEFAULT_CALIBRATOR",
    "QuantConfig",
    "batch_size",
    "build",
    "calibrate",
    "compile_onnx",
    "input_names",
    "load_samples",
    "lower",
    "prepare",
    "quantize",
    "split_holdout",
]


@dataclass
class Compiled:
    """Everything ``tvm-intq compile`` produces, as plain data for the report."""

    info: ModelInfo
    prepared: tvm.IRModule
    qdq: tvm.IRModule
    integer: tvm.IRModule
    report: dict


def load_samples(path, info: ModelInfo, what: str) -> SampleSet:
    samples = load_npz(path, info.inputs, info.input_dtypes)
    check_inputs(samples, info.inputs, f"{what} {path}")
    return samples


def split_holdout(samples: SampleSet, fraction: float = 0.1) -> tuple[SampleSet, SampleSet]:
    """Calibration and evaluation parts of one sample set (the last ``fraction``, at least one
    sample, is kept out of calibration so the reported error is measured on unseen data)."""
    n = samples.num_samples
    if n < 2:
        return samples, samples
    k = max(1, int(round(n * fraction)))
    head = SampleSet({a: v[: n - k] for a, v in samples.arrays.items()})
    tail = SampleSet(
        {a: v[n - k :] for a, v in samples.arrays.items()},
        {
            e: v[n - k :]
            for e, v in samples.extras.items()
            if isinstance(v, np.ndarray) and len(v) == n
        },
    )
    return head, tail


#: The phases of :func:`compile_onnx` (``choose float layers`` only with ``float_layers``).
COMPILE_PHASES = ("import", "calibrate", "choose float layers", "quantize", "evaluate")


def compile_onnx(
    model_path,
    calib: SampleSet,
    config: QuantConfig,
    target="host",
    input_shapes: dict | None = None,
    eval_samples: SampleSet | None = None,
    phases: Phases | None = None,
    log=None,
) -> Compiled:
    """Import, calibrate, quantize to integers and evaluate an ONNX model (the report's data).

    ``phases``: the progress bar over the caller's phases, which must name
    :data:`COMPILE_PHASES` (``tvm-intq compile`` adds its build); by default one of its own,
    shown when ``config.progress``. The seconds of each phase are in the report
    (``compile_seconds``). ``log(line)`` gets the searches' line per candidate
    (``scheme="auto"``, ``float_layers="auto"``), which share ``config.search_minutes``."""
    own = phases is None
    if own:
        phases = Phases(COMPILE_PHASES, enabled=config.progress)
    if not parse_float_layers(config.float_layers):
        phases.skip("choose float layers")
    try:
        # The float program calibration builds is built once and run again by the evaluation
        # (same module, same exposed tensors), and by the hybrid-precision search.
        with reuse_builds():
            compiled = _compile(
                model_path, calib, config, target, input_shapes, eval_samples, phases, log
            )
    finally:
        if own:
            phases.close()
    compiled.report["compile_seconds"] = dict(phases.seconds)
    return compiled


def _compile(
    model_path, calib, config, target, input_shapes, eval_samples, phases, log
) -> Compiled:
    budget = Budget(config.search_minutes, log)
    with phases.phase("import"):
        mod, info = import_model(model_path, input_shapes)
        check_inputs(calib, info.inputs, "calibration data")
        if eval_samples is None:
            calib, eval_samples = split_holdout(calib)
        prepared = prepare(mod)
        float_layers.check_float_layers(config, prepared)
    sanity: list[str] = []  # degenerate outputs on the calibration data (one line each)
    choice = None
    with phases.phase("calibrate"):
        if config.scheme == "auto":  # a scheme per layer, by measured error (search.scheme_choice)
            by_scheme = scheme_choice.calibrate_all(
                prepared, calib, config.calibrator, config.progress, **config.calibrator_options
            )
            search = float_layers.search_module(model_path, input_shapes, info, prepared)
            scheme, ranges, choice = scheme_choice.choose(search, by_scheme, calib, budget=budget)
            config = replace(config, scheme=scheme)
        else:
            ranges = calibrate(
                prepared,
                calib,
                config.calibrator,
                config.scheme,
                config.progress,
                warnings=sanity,
                output_names=info.outputs,
                **config.calibrator_options,
            )
    selection = None
    if parse_float_layers(config.float_layers):
        with phases.phase("choose float layers"):
            selection = _float_layers(
                model_path, input_shapes, info, prepared, ranges, config, eval_samples, budget
            )
    if selection is not None:
        config = replace(config, float_layers=selection.names)
    with phases.phase("quantize"):
        qdq, integer = lower(prepared, ranges, config)
    with phases.phase("evaluate"):
        report = evaluate(
            prepared,
            qdq,
            integer,
            eval_samples,
            progress=config.progress,
            ranges=ranges,
            output_names=info.outputs,
        )
    report.update(
        model=str(model_path),
        target=target if isinstance(target, str) else target.name,
        scheme=getattr(config.scheme, "name", config.scheme),
        calibrator=config.calibrator,
    )
    report["calibration_warnings"] = sanity
    if choice is not None:
        report["scheme_choice"] = choice
    if selection is not None:
        report["float_layers"] = selection.layers
        report["hybrid_precision"] = selection.as_report()
    return Compiled(info, prepared, qdq, integer, report)


def _float_layers(model_path, input_shapes, info, prepared, ranges, config, samples, budget):
    """The :class:`~tvm_intq.search.float_layers.Selection` of float layers ``config`` asks for
    (None: none)."""
    wanted = parse_float_layers(config.float_layers)
    plan = analyze(prepared["main"])
    by_name = {v.name: v for v in plan.points}

    def label(name):
        v = by_name.get(name)
        return (
            None if v is None else ("input" if plan.nodes[v].role == "input" else describe(plan, v))
        )

    if wanted == "auto":
        target = float_layers.Target(config.max_drop, config.min_sqnr)
        search = float_layers.search_module(model_path, input_shapes, info, prepared)
        return float_layers.select_float_layers(
            search, ranges, config.scheme, samples, target, describe=label, budget=budget
        )
    if wanted:
        return float_layers.explicit_selection(wanted, label)
    return None
