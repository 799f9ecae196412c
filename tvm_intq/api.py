"""The Python API: one function per user verb, data flowing one way.

    import -> prepare -> calibrate -> annotate -> fold to integer -> build -> run/evaluate

A user with a Relax module of their own calls :func:`prepare`, :func:`calibrate` and then our
passes in their own ``tvm.transform.Sequential`` (see the README); :func:`quantize` does the
same in one call, and :func:`compile_onnx` is the whole ``tvm-intq compile`` job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from . import hybrid, metrics
from .calibration import SampleSet, collect_ranges, get_calibrator, load_npz
from .errors import IntqError
from .frontend import ModelInfo, import_onnx
from .relay_passes import (Annotate, CanonicalizeForQuantization, ExposeTensors, FoldToInteger,
                           analyze, float_ops)
from .relay_passes.accumulators import accumulator_report
from .relay_passes.check_integer import check_integer_only
from .relay_passes.ir_utils import const_value, op_name, shape_of
from .relay_passes.quant_points import tensor_args
from .relay_passes.rebuild import bindings_of
from .runner import Runner, check_inputs, run_all
from .schedules import build_pipeline
from .schemes import get_scheme
from .targets import get_target

# Percentile is robust on the spiky distributions real inputs have (an image background, ReLU
# zeros); KL clips hard there (the bundled model: top-1 97.1 % vs 98.0 %, output SQNR 10.9 dB
# vs 33.5 dB; a TensorRT-style KL on |x| gave 21 %, see calibration/kl.py).
DEFAULT_CALIBRATOR = "percentile"


@dataclass
class QuantConfig:
    """How to quantize: scheme (policy), calibrator and its options, strictness."""

    scheme: str = "hybrid-asym"
    calibrator: str = DEFAULT_CALIBRATOR
    calibrator_options: dict = field(default_factory=dict)
    integer_only: bool = False
    progress: bool = True
    #: Hybrid precision: quantization points kept float, or "auto" (see :mod:`tvm_intq.hybrid`)
    #: with a target: top-1 within ``max_drop`` points of float and/or ``min_sqnr`` dB.
    float_layers: list | str = field(default_factory=list)
    max_drop: float | None = None
    min_sqnr: float | None = None


def prepare(mod: tvm.IRModule) -> tvm.IRModule:
    """The canonical float module that calibration and annotation both read."""
    return CanonicalizeForQuantization()(mod)


def build(mod: tvm.IRModule, target="host", database=None):
    """Compile with TVM for a target name (``host``, ``aarch64``, ``riscv64``) or TargetSpec.

    Each integer layer (conv + requantize + clip + cast) fuses into one kernel; int8
    conv/dense use the target's dot-product instruction when it has one; ``database`` (a
    MetaSchedule database, see :mod:`tvm_intq.schedules`) supplies tuned kernels
    (:func:`~tvm_intq.schedules.build_pipeline`).
    """
    spec = get_target(target) if isinstance(target, str) else target
    return tvm.compile(mod, spec.target(), relax_pipeline=build_pipeline(spec.int8_dot, database))


def input_names(mod: tvm.IRModule) -> list[str]:
    return [p.name for p in mod["main"].params]


def batch_size(mod: tvm.IRModule) -> int:
    shape = shape_of(mod["main"].params[0])
    return shape[0] if shape else 1


def _num_outputs(mod: tvm.IRModule) -> int:
    def leaves(ty):
        return sum(leaves(f) for f in ty.fields) if isinstance(ty, relax.TupleType) else 1

    return leaves(mod["main"].ret_ty)


def _run_exposed(mod, names, samples, batch, progress=False, desc="run"):
    """Run ``mod`` with the named tensors exposed; returns (outputs, {name: array})."""
    exposed = ExposeTensors(names)(mod)
    runner = Runner(build(exposed, "host"), input_names(mod))
    outs = run_all(runner, samples, batch, progress, desc)
    n = _num_outputs(mod)
    return outs[:n], dict(zip(names, outs[n:]))


def calibrate(mod: tvm.IRModule, samples: SampleSet, calibrator: str = DEFAULT_CALIBRATOR,
              scheme: str = "hybrid-asym", progress: bool = True, **options) -> dict:
    """Clipping ranges ``{tensor name: (lo, hi)}`` of every quantization point of a prepared
    module, from the float model built by TVM on the host and run on ``samples``."""
    check_inputs(samples, {p.name: shape_of(p) for p in mod["main"].params}, "calibration data")
    points = [v.name for v in analyze(mod["main"]).points]
    exposed = ExposeTensors(points)(mod)
    runner = Runner(build(exposed, "host"), input_names(mod))
    n = _num_outputs(mod)

    def run(feeds):
        return dict(zip(points, runner(feeds)[n:]))

    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    cal = scheme.wrap_calibrator(get_calibrator(calibrator, **options))  # pow2: exponent search
    return collect_ranges(run, samples, batch_size(mod), cal,
                          symmetric=scheme.symmetric_activations, progress=progress)


def lower(prepared: tvm.IRModule, ranges: dict, config: QuantConfig | None = None):
    """``(qdq module, integer module)`` from a prepared module and its calibration ranges."""
    config = config or QuantConfig()
    float_layers = hybrid.parse_float_layers(config.float_layers)
    if float_layers == "auto":
        raise IntqError("float_layers='auto' is chosen by compile_onnx (or "
                        "tvm_intq.hybrid.select_float_layers); lower takes a list of names")
    qdq = Annotate(ranges, config.scheme, float_layers)(prepared)
    integer = FoldToInteger()(qdq)
    if config.integer_only:
        check_integer_only(integer)  # directly, not as a pass: TVM would re-wrap the IntqError
    return qdq, integer


def quantize(mod: tvm.IRModule, samples: SampleSet, config: QuantConfig | None = None) -> tvm.IRModule:
    """Float Relax module + calibration samples -> integer Relax module."""
    config = config or QuantConfig()
    prepared = prepare(mod)
    ranges = calibrate(prepared, samples, config.calibrator, config.scheme, config.progress,
                       **config.calibrator_options)
    return lower(prepared, ranges, config)[1]


# ---------------------------------------------------------------------------------------------
# The compile job and its evaluation
# ---------------------------------------------------------------------------------------------
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
    tail = SampleSet({a: v[n - k:] for a, v in samples.arrays.items()},
                     {e: v[n - k:] for e, v in samples.extras.items()
                      if isinstance(v, np.ndarray) and len(v) == n})
    return head, tail


def compile_onnx(model_path, calib: SampleSet, config: QuantConfig, target="host",
                 input_shapes: dict | None = None, eval_samples: SampleSet | None = None) -> Compiled:
    """Import, calibrate, quantize to integers and evaluate an ONNX model (the report's data)."""
    mod, info = import_onnx(model_path, input_shapes)
    check_inputs(calib, info.inputs, "calibration data")
    if eval_samples is None:
        calib, eval_samples = split_holdout(calib)
    prepared = prepare(mod)
    hybrid.check_float_layers(config, prepared)
    scheme_choice = None
    if config.scheme == "auto":  # a scheme per layer, by measured error (tvm_intq.auto_scheme)
        from . import auto_scheme

        by_scheme = auto_scheme.calibrate_all(prepared, calib, config.calibrator, config.progress,
                                              **config.calibrator_options)
        search = hybrid.search_module(model_path, input_shapes, info, prepared)
        scheme, ranges, scheme_choice = auto_scheme.choose(search, by_scheme, calib)
        config = replace(config, scheme=scheme)
    else:
        ranges = calibrate(prepared, calib, config.calibrator, config.scheme, config.progress,
                           **config.calibrator_options)
    selection = _float_layers(model_path, input_shapes, info, prepared, ranges, config,
                              eval_samples)
    if selection is not None:
        config = replace(config, float_layers=selection.names)
    qdq, integer = lower(prepared, ranges, config)
    report = evaluate(prepared, qdq, integer, eval_samples, progress=config.progress,
                      ranges=ranges)
    report.update(model=str(model_path), target=target if isinstance(target, str) else target.name,
                  scheme=getattr(config.scheme, "name", config.scheme), calibrator=config.calibrator)
    if scheme_choice is not None:
        report["scheme_choice"] = scheme_choice
    if selection is not None:
        report["float_layers"] = selection.layers
        report["hybrid_precision"] = selection.as_report()
    return Compiled(info, prepared, qdq, integer, report)


def _float_layers(model_path, input_shapes, info, prepared, ranges, config, samples):
    """The :class:`~tvm_intq.hybrid.Selection` of float layers ``config`` asks for (None: none)."""
    wanted = hybrid.parse_float_layers(config.float_layers)
    plan = analyze(prepared["main"])
    by_name = {v.name: v for v in plan.points}

    def describe(name):
        v = by_name.get(name)
        return None if v is None else ("input" if plan.nodes[v].role == "input" else _describe(plan, v))

    if wanted == "auto":
        target = hybrid.Target(config.max_drop, config.min_sqnr)
        search = hybrid.search_module(model_path, input_shapes, info, prepared)
        return hybrid.select_float_layers(search, ranges, config.scheme, samples, target,
                                          describe=describe)
    if wanted:
        return hybrid.explicit_selection(wanted, describe)
    return None


def _qparams_of(qdq: tvm.IRModule) -> dict:
    """``{quantization point: (scale, zero point)}`` read from Annotate's quantize calls."""
    out = {}
    for b in bindings_of(qdq["main"]):
        if op_name(b.value) == "relax.quantize" and b.var.name.endswith("_q"):
            out[b.var.name[:-2]] = (float(const_value(b.value.args[1])),
                                    int(const_value(b.value.args[2])))
    return out


def _describe(plan, var) -> str:
    node = plan.nodes[var]
    if node.role == "elementwise":
        region = []  # the cluster ops this tensor depends on, in program order

        def walk(v):
            n = plan.nodes.get(v)
            if n is not None and n.role == "elementwise" and n.group == node.group and v not in region:
                for a in tensor_args(n.call):
                    walk(a)
                region.append(v)

        walk(var)
        return "lut(" + ",".join(op_name(plan.nodes[v].call).split(".")[-1] for v in region) + ")"
    parts = []
    while node.role == "epilogue":
        parts.append(op_name(node.call).split(".")[-1])
        node = plan.nodes[node.call.args[0]]
    name = op_name(node.call) if node.call is not None else "input"
    return "+".join([(name or "call").split(".")[-1]] + parts[::-1])


def _input_point(plan, var):
    """The quantization point a layer reads first (through its group and data movement)."""
    node = plan.nodes[var]
    while node.role == "epilogue":
        node = plan.nodes[tensor_args(node.call)[0]]
    if node.role == "elementwise":
        arg = node.source
    else:
        args = tensor_args(node.call)
        arg = args[0] if args else None
    while arg in plan.nodes and plan.nodes[arg].role == "passthrough":
        arg = tensor_args(plan.nodes[arg].call)[0]
    return arg if arg in plan.points else None


def evaluate(prepared, qdq, integer, samples: SampleSet, progress: bool = False,
             ranges: dict | None = None, histograms: int = 4) -> dict:
    """Integer program vs float on ``samples``: output and per-layer error (S2 Eqs. 23-25:
    Manhattan, Euclidean, SQNR of each layer's output against float), top-1 when the samples
    carry ``labels``, weight bytes, the float ops left, each accumulator's worst case
    (``accumulators``) and, for the ``histograms`` worst layers, the histogram of their float
    values with the clipping range (``ranges``, else the representable one)."""
    plan = analyze(prepared["main"])
    points = [v for v in plan.points]
    names = [v.name for v in points]
    available = {b.var.name for b in bindings_of(integer["main"])}
    qparams = _qparams_of(qdq)
    float_points = {n for n in names if n not in qparams}  # hybrid precision: left float
    int_names = [f"{n}_q" for n in names if f"{n}_q" in available] + \
        [n for n in names if n in float_points and n in available]
    batch = batch_size(prepared)
    f_out, f_t = _run_exposed(prepared, names, samples, batch, progress, "evaluate float")
    i_out, i_t = _run_exposed(integer, int_names, samples, batch, progress, "evaluate int8")
    still_float = {b.var.name for b in bindings_of(integer["main"]) if op_name(b.value) == "relax.quantize"}
    layers = []
    for var in points:
        if plan.nodes[var].role == "input":
            continue
        name = var.name
        src = _input_point(plan, var)
        s_in, zp_in = qparams.get(src.name, (None, None)) if src is not None else (None, None)
        got = None
        if f"{name}_q" in i_t:
            s, zp = qparams[name]
            got = s * (i_t[f"{name}_q"].astype(np.float64) - zp)
        elif name in float_points and name in i_t:
            got = i_t[name].astype(np.float64)
        elif name in float_points and not plan.nodes[var].users and len(i_out) == 1:
            got = i_out[0].astype(np.float64)  # a float model output keeps no name of its own
        layers.append({
            "name": name, "op": _describe(plan, var),
            "precision": "float" if f"{name}_q" in still_float or name in float_points else "int8",
            "input_scale": s_in, "input_zero_point": zp_in,
            "sqnr_db": None if got is None else _finite(metrics.sqnr_db(f_t[name], got)),
            "manhattan": None if got is None else metrics.manhattan(f_t[name], got),
            "euclidean": None if got is None else metrics.euclidean(f_t[name], got),
        })
    left = float_ops(integer)
    report = {
        "integer_only": not left,
        "float_ops": left,
        "layers": layers,
        "output_sqnr_db": _finite(metrics.sqnr_db(f_out[0], i_out[0])),
        "weights_bytes": {"fp32": constant_bytes(prepared), "int8": constant_bytes(integer)},
        "num_eval_samples": samples.num_samples,
        "accumulators": accumulator_report(integer),
        "layer_histograms": _worst_histograms(layers, f_t, qparams, ranges, histograms),
    }
    labels = samples.extras.get("labels")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        report["top1"] = {"fp32": top1(f_out[0], labels), "int8": top1(i_out[0], labels)}
    return report


def _worst_histograms(layers, f_t, qparams, ranges, count: int, bins: int = 128) -> list[dict]:
    """For the ``count`` layers of lowest SQNR: a histogram of their float values with the
    calibrated clipping range and the range int8 can represent (plain data for the plot)."""
    scored = sorted((lay for lay in layers if lay["sqnr_db"] is not None and lay["name"] in qparams),
                    key=lambda lay: lay["sqnr_db"])[:count]
    out = []
    for lay in scored:
        x = np.asarray(f_t[lay["name"]], np.float64).ravel()
        s, zp = qparams[lay["name"]]
        representable = [s * (-128 - zp), s * (127 - zp)]
        clip = list(ranges[lay["name"]]) if ranges and lay["name"] in ranges else representable
        lo, hi = min(x.min(), clip[0]), max(x.max(), clip[1])
        counts, edges = np.histogram(x, bins=bins, range=(lo, hi) if hi > lo else None)
        out.append({"name": lay["name"], "op": lay["op"], "sqnr_db": lay["sqnr_db"],
                    "counts": counts.tolist(), "edges": edges.tolist(),
                    "clip_range": [float(v) for v in clip],
                    "representable_range": [float(v) for v in representable],
                    "min": float(x.min()), "max": float(x.max())})
    return out


def _finite(x: float) -> float:
    # JSON has no inf: report an exact match as a large finite number of decibels.
    return float(min(max(x, -999.0), 999.0))


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    pred = logits.reshape(len(labels), -1).argmax(axis=1)
    return float(np.mean(pred == labels))


def constant_bytes(mod: tvm.IRModule) -> int:
    """Bytes of the tensor constants ``main`` holds (weights, biases, requantize constants,
    lookup tables): what the compiled model stores besides code."""
    total = 0
    seen = set()

    def visit(expr):
        value = const_value(expr)
        if value is not None and expr not in seen:
            seen.add(expr)
            nonlocal total
            total += value.nbytes

    relax.analysis.post_order_visit(mod["main"], visit)
    return total


# ---------------------------------------------------------------------------------------------
# Compiled libraries on the host
# ---------------------------------------------------------------------------------------------
def sidecar_path(library) -> Path:
    """Where ``compile`` writes a library's inputs, outputs and target (``model.so.json``)."""
    return Path(str(library) + ".json")


def read_sidecar(library) -> dict:
    library = Path(library)
    if not library.is_file():
        raise IntqError(f"{library}: no such library")
    meta = sidecar_path(library)
    if not meta.is_file():
        raise IntqError(f"{library}: {meta.name} is missing; compile the model with 'tvm-intq compile'")
    return json.loads(meta.read_text())


def run_library(library, inputs_path) -> dict:
    """Run a host library on every sample of an .npz: ``{output name: array}``, samples on axis 0."""
    meta = read_sidecar(library)
    if meta["target"] != "host":
        raise IntqError(f"{library} was built for {meta['target']}; run it on such a board")
    shapes = {k: tuple(v) for k, v in meta["inputs"].items()}
    samples = load_npz(inputs_path, shapes, meta["input_dtypes"])
    check_inputs(samples, shapes, f"--input {inputs_path}")
    runner = Runner(tvm.runtime.load_module(str(library)), list(shapes))
    outputs = run_all(runner, samples, next(iter(shapes.values()))[0])
    return dict(zip(meta["outputs"], outputs))
