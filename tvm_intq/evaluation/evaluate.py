"""The integer program against float, layer by layer: the numbers of the compile report."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.steps import batch_size, run_exposed
from tvm_intq.core import metrics
from tvm_intq.relay_passes import analyze, float_ops
from tvm_intq.relay_passes.analysis.accumulators import accumulator_report
from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.output_parts import output_parts
from tvm_intq.relay_passes.analysis.quant_points import tensor_args
from tvm_intq.relay_passes.analysis.rebuild import bindings_of


def _qparams_of(qdq: tvm.IRModule) -> dict:
    """``{quantization point: (scale, zero point)}`` read from Annotate's quantize calls."""
    out = {}
    for b in bindings_of(qdq["main"]):
        if op_name(b.value) == "relax.quantize" and b.var.name.endswith("_q"):
            out[b.var.name[:-2]] = (
                float(const_value(b.value.args[1])),
                int(const_value(b.value.args[2])),
            )
    return out


def describe(plan, var) -> str:
    node = plan.nodes[var]
    if node.role == "elementwise":
        region = []  # the cluster ops this tensor depends on, in program order

        def walk(v):
            n = plan.nodes.get(v)
            if (
                n is not None
                and n.role == "elementwise"
                and n.group == node.group
                and v not in region
            ):
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


def evaluate(
    prepared,
    qdq,
    integer,
    samples: SampleSet,
    progress: bool = False,
    ranges: dict | None = None,
    histograms: int = 4,
    output_names: list | None = None,
) -> dict:
    """Integer program vs float on ``samples``: output and per-layer error (S2 Eqs. 23-25:
    Manhattan, Euclidean, SQNR of each layer's output against float), top-1 when the samples
    carry ``labels``, weight bytes, the float ops left, each accumulator's worst case
    (``accumulators``) and, for the ``histograms`` worst layers, the histogram of their float
    values with the clipping range (``ranges``, else the representable one). Every output is
    measured, and each part a detection head concatenates into one (``outputs``; the lowest
    of them all is ``worst_part``); ``output_sqnr_db`` is the first output's, whole."""
    plan = analyze(prepared["main"])
    points = [v for v in plan.points]
    names = [v.name for v in points]
    available = {b.var.name for b in bindings_of(integer["main"])}
    qparams = _qparams_of(qdq)
    float_points = {n for n in names if n not in qparams}  # hybrid precision: left float
    int_names = [f"{n}_q" for n in names if f"{n}_q" in available] + [
        n for n in names if n in float_points and n in available
    ]
    batch = batch_size(prepared)
    f_out, f_t = run_exposed(prepared, names, samples, batch, progress, "evaluate float")
    i_out, i_t = run_exposed(integer, int_names, samples, batch, progress, "evaluate int8")
    still_float = {
        b.var.name for b in bindings_of(integer["main"]) if op_name(b.value) == "relax.quantize"
    }
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
        layers.append(
            {
                "name": name,
                "op": describe(plan, var),
                "precision": "float"
                if f"{name}_q" in still_float or name in float_points
                else "int8",
                "input_scale": s_in,
                "input_zero_point": zp_in,
                "sqnr_db": None if got is None else _finite(metrics.sqnr_db(f_t[name], got)),
                "manhattan": None if got is None else metrics.manhattan(f_t[name], got),
                "euclidean": None if got is None else metrics.euclidean(f_t[name], got),
            }
        )
    left = float_ops(integer)
    errors = metrics.output_errors(f_out, i_out, part_masks(prepared, f_out), output_names)
    report = {
        "integer_only": not left,
        "float_ops": left,
        "layers": layers,
        "output_sqnr_db": _finite(metrics.sqnr_db(f_out[0], i_out[0])),
        "outputs": errors,
        "worst_part": metrics.worst_part(errors),
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


def part_masks(prepared, outputs) -> list:
    """``[(part name, mask), ...]`` (or None) per output of ``prepared`` over the arrays
    ``outputs`` (samples stacked on axis 0), for :func:`~tvm_intq.core.metrics.output_errors`."""
    masks = []
    for parts, out in zip(output_parts(prepared["main"]), outputs):
        masks.append(None if parts is None else list(zip(parts.names, parts.masks(out.shape))))
    return masks


def _worst_histograms(layers, f_t, qparams, ranges, count: int, bins: int = 128) -> list[dict]:
    """For the ``count`` layers of lowest SQNR: a histogram of their float values with the
    calibrated clipping range and the range int8 can represent (plain data for the plot)."""
    scored = sorted(
        (lay for lay in layers if lay["sqnr_db"] is not None and lay["name"] in qparams),
        key=lambda lay: lay["sqnr_db"],
    )[:count]
    out = []
    for lay in scored:
        x = np.asarray(f_t[lay["name"]], np.float64).ravel()
        s, zp = qparams[lay["name"]]
        representable = [s * (-128 - zp), s * (127 - zp)]
        clip = list(ranges[lay["name"]]) if ranges and lay["name"] in ranges else representable
        lo, hi = min(x.min(), clip[0]), max(x.max(), clip[1])
        counts, edges = np.histogram(x, bins=bins, range=(lo, hi) if hi > lo else None)
        out.append(
            {
                "name": lay["name"],
                "op": lay["op"],
                "sqnr_db": lay["sqnr_db"],
                "counts": counts.tolist(),
                "edges": edges.tolist(),
                "clip_range": [float(v) for v in clip],
                "representable_range": [float(v) for v in representable],
                "min": float(x.min()),
                "max": float(x.max()),
            }
        )
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


def evaluate_prequantized(qdq, integer, samples: SampleSet | None, progress: bool = False) -> dict:
    """The report of a model quantized by another tool: its quantization points (scale and
    zero point of each quantize, as the model gives them), the float ops left, weight bytes
    and accumulators; with ``samples``, the integer program's output against the model
    computed in float between its quantize/dequantize pairs (``qdq``, what a QDQ runtime such
    as ONNX Runtime's reference computes) and top-1 when the samples carry ``labels``. There
    is no float model of ours to measure each layer against, so per-layer error is None.
    ``qdq`` None (a model imported straight to integers): no quantization points listed."""
    defs = {} if qdq is None else {b.var: b.value for b in bindings_of(qdq["main"])}
    layers = []
    for var, value in defs.items():
        if op_name(value) != "relax.quantize":
            continue
        scale, zp = const_value(value.args[1]), const_value(value.args[2])
        if scale is None or zp is None or scale.size != 1:
            continue
        producer = op_name(defs.get(value.args[0])) or "input"
        layers.append(
            {
                "name": var.name,
                "op": producer.replace("relax.", ""),
                "precision": "int8",
                "scale": float(scale.reshape(())),
                "zero_point": int(zp.reshape(())),
                "input_scale": None,
                "input_zero_point": None,
                "sqnr_db": None,
                "manhattan": None,
                "euclidean": None,
            }
        )
    left = float_ops(integer)
    report = {
        "integer_only": not left,
        "float_ops": left,
        "layers": layers,
        "output_sqnr_db": None,
        "weights_bytes": {"fp32": None, "int8": constant_bytes(integer)},
        "num_eval_samples": 0 if samples is None else samples.num_samples,
        "accumulators": accumulator_report(integer),
        "layer_histograms": [],
    }
    if samples is None:
        return report
    batch = batch_size(qdq)
    f_out, _ = run_exposed(qdq, [], samples, batch, progress, "evaluate qdq (float)")
    i_out, _ = run_exposed(integer, [], samples, batch, progress, "evaluate int8")
    report["output_sqnr_db"] = _finite(metrics.sqnr_db(f_out[0], i_out[0]))
    labels = samples.extras.get("labels")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        report["top1"] = {"fp32": top1(f_out[0], labels), "int8": top1(i_out[0], labels)}
    return report
