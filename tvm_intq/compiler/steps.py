"""The steps of the flow on a Relax module, one function each, data flowing one way:

    prepare -> calibrate -> lower (annotate, fold to integer) -> build

A user with a Relax module of their own calls :func:`prepare`, :func:`calibrate` and then our
passes in their own ``tvm.transform.Sequential`` (see the README); :func:`quantize` does the
same in one call.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import tvm
from tvm import relax

from tvm_intq.calibration import Calibrator, SampleSet, collect_ranges, for_scheme, get_calibrator
from tvm_intq.compiler.runner import Runner, check_inputs, run_all
from tvm_intq.core.config import DEFAULT_CALIBRATOR, QuantConfig, parse_float_layers
from tvm_intq.core.schemes import get_scheme
from tvm_intq.errors import IntqError
from tvm_intq.frontends.quiet import quiet_tvm
from tvm_intq.relay_passes import (
    Annotate,
    CanonicalizeForQuantization,
    ExposeTensors,
    FoldToInteger,
    analyze,
)
from tvm_intq.relay_passes.analysis.ir_utils import op_name, shape_of
from tvm_intq.relay_passes.analysis.output_parts import output_parts, returned_outputs
from tvm_intq.relay_passes.analysis.rebuild import bindings_of
from tvm_intq.relay_passes.check_integer import check_integer_only
from tvm_intq.schedules import build_pipeline, tir_pipeline
from tvm_intq.targets import get_target


def prepare(mod: tvm.IRModule) -> tvm.IRModule:
    """The canonical float module that calibration and annotation both read."""
    return CanonicalizeForQuantization()(mod)


def build(mod: tvm.IRModule, target="host", database=None, float_schedule: bool = False):
    """Compile with TVM for a target name (``host``, ``aarch64``, ``riscv64``) or TargetSpec.

    Each integer layer (conv + requantize + clip + cast) fuses into one kernel; int8
    conv/dense use the target's dot-product instruction when it has one; ``database`` (a
    MetaSchedule database, see :mod:`tvm_intq.schedules`) supplies tuned kernels
    (:func:`~tvm_intq.schedules.build_pipeline`); ``float_schedule``: float convs get the
    register-tiled schedule of :mod:`tvm_intq.schedules.float_schedule`; kernels' small scratch
    buffers live on the stack (:func:`~tvm_intq.schedules.tir_pipeline`).
    """
    spec = get_target(target) if isinstance(target, str) else target
    with quiet_tvm():  # TVM's warnings (one per kernel) are not the user's business
        return tvm.compile(
            mod,
            spec.target(),
            relax_pipeline=build_pipeline(spec.int8_dot, database, float_schedule=float_schedule),
            tir_pipeline=tir_pipeline(),
        )


def build_for_values(mod: tvm.IRModule):
    """The host build of a program run for its values (calibration, the report's evaluation,
    the searches): float kernels get :mod:`tvm_intq.schedules.float_schedule` (~5x faster
    than TVM's plain loops on light_resnet50, the same float values bit for bit)."""
    return build(mod, "host", float_schedule=True)


def input_names(mod: tvm.IRModule) -> list[str]:
    return [p.name for p in mod["main"].params]


def batch_size(mod: tvm.IRModule) -> int:
    shape = shape_of(mod["main"].params[0])
    return shape[0] if shape else 1


def num_outputs(mod: tvm.IRModule) -> int:
    def leaves(ty):
        return sum(leaves(f) for f in ty.fields) if isinstance(ty, relax.TupleType) else 1

    return leaves(mod["main"].ret_ty)


_REUSE: list | None = None  # [(module, names, runner)] while reuse_builds() is active


@contextmanager
def reuse_builds():
    """Inside, :func:`exposed_runner` builds a module with the same exposed tensors once
    (``compile_onnx``: calibration's float program serves the evaluation too); the builds are
    dropped on exit."""
    global _REUSE
    outer = _REUSE
    _REUSE = [] if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _REUSE = None


def exposed_runner(mod: tvm.IRModule, names: list[str]) -> Runner:
    """A runner of ``mod`` whose outputs are its own, then the tensors ``names``."""
    if _REUSE is not None:
        for m, n, runner in _REUSE:
            if m.same_as(mod) and n == tuple(names):
                return runner
    runner = Runner(build_for_values(ExposeTensors(names)(mod)), input_names(mod))
    if _REUSE is not None:
        _REUSE.append((mod, tuple(names), runner))
    return runner


def run_exposed(mod, names, samples, batch, progress=False, desc="run"):
    """Run ``mod`` with the named tensors exposed; returns (outputs, {name: array})."""
    runner = exposed_runner(mod, names)
    outs = run_all(runner, samples, batch, progress, desc)
    n = num_outputs(mod)
    return outs[:n], dict(zip(names, outs[n:]))


def calibrate(
    mod: tvm.IRModule,
    samples: SampleSet,
    calibrator: str | Calibrator = DEFAULT_CALIBRATOR,
    scheme: str = "hybrid-asym",
    progress: bool = True,
    warnings: list | None = None,
    output_names: list | None = None,
    **options,
) -> dict:
    """Clipping ranges ``{tensor name: (lo, hi)}`` of every quantization point of a prepared
    module, from the float model built by TVM on the host and run on ``samples``.
    ``calibrator`` is a registered name (built with ``options``, refined for the scheme) or a
    :class:`~tvm_intq.calibration.Calibrator` used as it is. Given a list, ``warnings``
    receives a line per model output (or output part) whose values on the calibration data
    look degenerate (:class:`OutputSanity`)."""
    check_inputs(samples, {p.name: shape_of(p) for p in mod["main"].params}, "calibration data")
    points = [v.name for v in analyze(mod["main"]).points]
    runner = exposed_runner(mod, points)
    n = num_outputs(mod)
    check = OutputSanity(mod) if warnings is not None else None

    def run(feeds):
        outs = runner(feeds)
        if check is not None:
            check.update(outs[:n])
        return dict(zip(points, outs[n:]))

    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    cal = (
        calibrator
        if isinstance(calibrator, Calibrator)
        else for_scheme(get_calibrator(calibrator, **options), scheme)
    )
    ranges = collect_ranges(
        run,
        samples,
        batch_size(mod),
        cal,
        symmetric=scheme.symmetric_activations,
        progress=progress,
    )
    if check is not None:
        warnings.extend(check.warnings(output_names))
    return ranges


class OutputSanity:
    """The model's outputs on the calibration data, checked for what says the data does not
    fit the task: an output (or a part a detection head concatenates into one) that is
    constant on every sample, or detection scores that never reach a decision threshold
    (every sigmoid output below 0.5, every value of a logit output named like a score below 0):
    a face detector calibrated on photos without faces then fires on every anchor in int8."""

    SCORE_NAMES = ("score", "class", "conf", "logit", "prob", "obj")

    def __init__(self, mod: tvm.IRModule):
        func = mod["main"]
        values = {b.var: b.value for b in bindings_of(func)}
        self.parts = output_parts(func)
        self.kinds = []  # per output: the kind of each part (of the whole output)
        for parts, out in zip(self.parts, returned_outputs(func)):
            names = [getattr(out, "name", "")] if parts is None else parts.names
            self.kinds.append([_kind(values, name) for name in names])
        self.lo: list = [None] * len(self.parts)
        self.hi: list = [None] * len(self.parts)

    def update(self, outs) -> None:
        for i, out in enumerate(outs):
            out = np.asarray(out, np.float64)
            parts = self.parts[i]
            masks = [np.ones(out.shape, bool)] if parts is None else parts.masks(out.shape)
            lo = [float(out[m].min()) if m.any() else np.inf for m in masks]
            hi = [float(out[m].max()) if m.any() else -np.inf for m in masks]
            if self.lo[i] is None:
                self.lo[i], self.hi[i] = lo, hi
            else:
                self.lo[i] = [min(a, b) for a, b in zip(self.lo[i], lo)]
                self.hi[i] = [max(a, b) for a, b in zip(self.hi[i], hi)]

    def warnings(self, output_names=None) -> list[str]:
        lines = []
        for i, parts in enumerate(self.parts):
            if self.lo[i] is None:
                continue
            name = output_names[i] if output_names and i < len(output_names) else f"output {i}"
            labels = [None] if parts is None else parts.names
            kinds = self.kinds[i] or ["value"]
            for k, part in enumerate(labels):
                lo, hi = self.lo[i][k], self.hi[i][k]
                where = f"output '{name}'" + (f" (part {part})" if part else "")
                kind = kinds[k] if k < len(kinds) else "value"
                if lo == hi:
                    lines.append(
                        f"{where} is constant ({lo:g}) on every calibration sample: "
                        "the calibration data may not fit the model's task"
                    )
                elif kind == "probability" and hi < 0.5:
                    lines.append(
                        f"{where}: every score is below 0.5 on the calibration data (max "
                        f"{hi:.3g}): does the data contain what the model detects?"
                    )
                elif (
                    kind == "value" and hi < 0 and any(s in name.lower() for s in self.SCORE_NAMES)
                ):
                    lines.append(
                        f"{where}: every score logit is below 0 (probability 0.5) on the "
                        f"calibration data (max {hi:.3g}): does the data contain what the "
                        "model detects?"
                    )
        return lines


def _kind(values: dict, name: str) -> str:
    """``probability`` for a part computed by a sigmoid (through data movement), else
    ``value``."""
    var = next((v for v in values if v.name == name), None)
    while var is not None:
        value = values.get(var)
        op = op_name(value)
        if op == "relax.sigmoid":
            return "probability"
        if op in ("relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims"):
            var = value.args[0]
            continue
        return "value"
    return "value"


def lower(prepared: tvm.IRModule, ranges: dict, config: QuantConfig | None = None):
    """``(qdq module, integer module)`` from a prepared module and its calibration ranges."""
    config = config or QuantConfig()
    float_layers = parse_float_layers(config.float_layers)
    if float_layers == "auto":
        raise IntqError(
            "float_layers='auto' is chosen by compile_onnx (or "
            "tvm_intq.search.float_layers.select_float_layers); lower takes a list of names"
        )
    qdq = Annotate(ranges, config.scheme, float_layers)(prepared)
    integer = FoldToInteger()(qdq)
    if config.integer_only:
        check_integer_only(integer)  # directly, not as a pass: TVM would re-wrap the IntqError
    return qdq, integer


def quantize(
    mod: tvm.IRModule, samples: SampleSet, config: QuantConfig | None = None
) -> tvm.IRModule:
    """Float Relax module + calibration samples -> integer Relax module."""
    config = config or QuantConfig()
    prepared = prepare(mod)
    ranges = calibrate(
        prepared,
        samples,
        config.calibrator,
        config.scheme,
        config.progress,
        **config.calibrator_options,
    )
    return lower(prepared, ranges, config)[1]
