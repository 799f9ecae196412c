"""Hybrid precision (S0's H-PTQ): which layers to keep in float, chosen by measurement.

Keeping a quantization point ``p`` in float (:class:`~tvm_intq.relay_passes.Annotate`'s
``float_layers``) removes the quantizer at ``p`` and the weight quantization of the layer
that computes it; the layers reading ``p`` then compute in float too. Which points to keep is
decided on a *gated* fake-quantized model, built and compiled once: every
``dequantize(quantize(t))`` of the QDQ graph becomes ``t + g_p * (dequantize(quantize(t)) - t)``
and every quantized weight ``W + g_p * (dequantize(Qw) - W)``, with one gate ``g_p`` per point
in an extra input vector. ``g = 1`` everywhere is the int8 model's arithmetic up to the integer
kernels' rounding, ``g = 0`` everywhere is exactly the float model, and ``g_p = 0`` alone keeps
``p`` float, so every candidate set costs one run of the compiled model instead of a compile.

The search (:func:`select_float_layers`):

1. each point alone kept in float (all others quantized): its gain in output SQNR, and in
   top-1 when the samples carry labels, over the all-int8 model. This ranks the layers by
   how much their quantization costs in the context of the others (the brief's "effect on
   output error when quantized alone" measured from the other side: in a deep model the two
   orders agree when errors add up, and this one measures the error the deployed model has);
2. points are added to the float set in that order until the target holds (``max_drop``:
   top-1 within that many points of float; ``min_sqnr``: output SQNR at least that many dB);
3. each chosen point is then dropped again if the target still holds without it, so no point
   stays float that the others make unnecessary.

The labelled samples that measure the target are the ones the choice is made on (the
``--eval`` set): the reported accuracy of a hybrid model is therefore measured on the data
that selected its float layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm

from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.runner import Runner
from tvm_intq.compiler.steps import batch_size, build_for_values, input_names, prepare
from tvm_intq.core import metrics
from tvm_intq.core.config import parse_float_layers
from tvm_intq.errors import IntqError
from tvm_intq.frontends.onnx import import_proto, load_onnx
from tvm_intq.relay_passes import GateQuantization, analyze
from tvm_intq.relay_passes.analysis.output_parts import output_parts
from tvm_intq.search.budget import Budget, timed

GATES = "quant_gates"


def gated_module(prepared: tvm.IRModule, ranges: dict, scheme) -> tuple[tvm.IRModule, list[str]]:
    """The QDQ model of ``prepared`` with one gate per quantization point (module docstring;
    :class:`~tvm_intq.relay_passes.GateQuantization` with one candidate).

    Returns ``(module, point names)``: ``main`` takes the original inputs and then
    ``quant_gates: float32[len(points)]``, gate ``i`` belonging to ``points[i]``.
    """
    gate = GateQuantization([(scheme, ranges)], GATES)
    return gate(prepared), gate.points


class GatedRunner:
    """The gated model compiled once; :meth:`outputs` runs it for one set of float points."""

    def __init__(self, prepared, ranges, scheme, samples: SampleSet):
        mod, self.points = gated_module(prepared, ranges, scheme)
        self.inputs = input_names(prepared)
        self.runner = Runner(build_for_values(mod), self.inputs + [GATES])
        self.samples = samples
        self.batch = batch_size(prepared)

    def outputs(
        self, float_points=(), all_float: bool = False, samples: SampleSet | None = None
    ) -> list[np.ndarray]:
        """Every output over all samples (or ``samples``) with ``float_points`` float."""
        g = (
            np.zeros(len(self.points), np.float32)
            if all_float
            else np.ones(len(self.points), np.float32)
        )
        for p in float_points:
            g[self.points.index(p)] = 0.0
        return run_outputs(self.runner, samples or self.samples, self.batch, {GATES: g})


def run_outputs(runner, samples: SampleSet, batch: int, extra: dict) -> list[np.ndarray]:
    """Every output of ``runner`` over ``samples`` (stacked on axis 0), ``extra`` fed too."""
    chunks = []
    for feeds, valid in samples.batches(batch):
        chunks.append([o[:valid] for o in runner(dict(feeds, **extra))])
    return [np.concatenate(c, axis=0) for c in zip(*chunks)]


class Scorer:
    """The error the searches minimise: the lowest SQNR over every output of the model and
    every part a detection head concatenates into one (:mod:`~tvm_intq.relay_passes.analysis.
    output_parts`), so that the class scores beside the boxes count as much as the boxes."""

    def __init__(self, prepared):
        self.parts = output_parts(prepared["main"])

    def __call__(self, outs, refs, labels=None) -> dict:
        masks = [
            None if p is None else list(zip(p.names, p.masks(o.shape)))
            for p, o in zip(self.parts, refs)
        ]
        errors = metrics.output_errors(refs, outs, masks)
        worst = metrics.worst_part(errors)
        m = {"sqnr_db": worst["sqnr_db"], "output_sqnr_db": errors[0]["sqnr_db"]}
        if len(errors) > 1 or errors[0]["parts"]:
            m["worst_part"] = worst
        if labels is not None:
            m["top1"] = float(np.mean(outs[0].reshape(len(labels), -1).argmax(1) == labels))
            m["top1_fp32"] = float(np.mean(refs[0].reshape(len(labels), -1).argmax(1) == labels))
        return m


@dataclass
class Target:
    """What hybrid precision must reach: top-1 within ``max_drop`` points of float (labels
    needed) and/or an SQNR of at least ``min_sqnr`` dB on every output and on every part a
    detection head concatenates into one (:class:`Scorer`)."""

    max_drop: float | None = None
    min_sqnr: float | None = None

    def __post_init__(self):
        if self.max_drop is None and self.min_sqnr is None:
            raise IntqError(
                "--float-layers auto needs a target: --max-drop POINTS (the "
                "evaluation data must hold labels) or --min-sqnr DB"
            )

    def met(self, m: dict) -> bool:
        ok = True
        if self.max_drop is not None:
            ok &= 100.0 * (m["top1_fp32"] - m["top1"]) <= self.max_drop + 1e-9
        if self.min_sqnr is not None:
            ok &= m["sqnr_db"] >= self.min_sqnr
        return bool(ok)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"top-1 within {self.max_drop:g} points of float")
        if self.min_sqnr is not None:
            parts.append(f"SQNR of every output part >= {self.min_sqnr:g} dB")
        return " and ".join(parts)


@dataclass
class Selection:
    """The float points chosen, why, and the search's measurements (plain data)."""

    layers: list = field(default_factory=list)  # [{name, op, reason, sqnr_gain_db, top1_gain}]
    target: str = ""
    ranking: list = field(default_factory=list)  # every point's gain, best first
    int8: dict = field(default_factory=dict)  # metrics of the all-int8 simulation
    hybrid: dict = field(default_factory=dict)  # metrics of the chosen set (simulation)
    budget_exhausted: bool = False  # the time ran out before the target held

    @property
    def names(self) -> list[str]:
        return [layer["name"] for layer in self.layers]

    def as_report(self) -> dict:
        return {
            "target": self.target,
            "layers": self.layers,
            "simulated_int8": self.int8,
            "simulated_hybrid": self.hybrid,
            "ranking": self.ranking,
            "budget_exhausted": self.budget_exhausted,
        }


def select_float_layers(
    prepared,
    ranges,
    scheme,
    samples: SampleSet,
    target: Target,
    candidates=None,
    describe=None,
    rank_samples: int = 256,
    budget: Budget | None = None,
) -> Selection:
    """The fewest quantization points to keep float so that ``target`` holds (module
    docstring), measured on ``samples``. ``prepared`` may take more samples per call than
    the model (see :func:`search_module`): only its tensor names must match ``ranges``.
    ``candidates`` limits the points considered; ``describe(name)`` labels a point's layer.
    The ranking (one run per point) uses the first ``rank_samples`` samples, fewer when the
    ``budget`` (:class:`~tvm_intq.search.budget.Budget`) would not hold them; the float set is
    grown (only from layers whose measured gain is positive) and pruned on all of them. When
    the budget runs out first, the best set measured so far is returned, and says so."""
    budget = budget or Budget(None)
    labels = samples.extras.get("labels")
    if target.max_drop is not None and labels is None:
        raise IntqError(
            "--max-drop needs labels in the evaluation data (an array 'labels' "
            "in the --eval .npz); use --min-sqnr without labels"
        )
    labels = None if labels is None else np.asarray(labels).reshape(-1)
    runner, seconds = timed(GatedRunner, prepared, ranges, scheme, samples)
    budget.say("float layers", f"gated model compiled ({seconds:.0f} s)")
    score = Scorer(prepared)
    ref, seconds = timed(runner.outputs, all_float=True)
    per_sample = seconds / max(samples.num_samples, 1)
    cands = list(runner.points if candidates is None else candidates)

    def measure(points):
        return score(runner.outputs(points), ref, labels)

    base = measure(())
    sel = Selection(target=target.describe(), int8=base)
    budget.say("float layers", f"all int8: {_describe_measure(base)}")
    if target.met(base):
        sel.hybrid = base
        return sel
    n_rank = budget.samples_for(len(cands) + 1, per_sample, 0.5, rank_samples)
    few = samples.head(n_rank) if samples.num_samples > n_rank else samples
    n_few = few.num_samples
    few_labels = None if labels is None else labels[:n_few]
    few_ref = [r[:n_few] for r in ref]
    few_base = score(runner.outputs((), samples=few), few_ref, few_labels)
    gains = []
    for i, p in enumerate(cands):
        if budget.expired():
            budget.say("float layers", f"time is up: ranked {i} of {len(cands)} layers")
            break
        m = score(runner.outputs((p,), samples=few), few_ref, few_labels)
        gain = {"name": p, "sqnr_gain_db": round(m["sqnr_db"] - few_base["sqnr_db"], 3)}
        if labels is not None:
            gain["top1_gain"] = round(100.0 * (m["top1"] - few_base["top1"]), 2)
        gains.append(gain)
        budget.say(
            "float layers",
            f"{i + 1}/{len(cands)} {p} float alone: {gain['sqnr_gain_db']:+.1f} dB"
            + (f", top-1 {gain['top1_gain']:+.1f}" if "top1_gain" in gain else "")
            + f" ({n_few} samples)",
        )
    key = (
        (lambda g: (g.get("top1_gain", 0.0), g["sqnr_gain_db"]))
        if target.max_drop is not None
        else (lambda g: g["sqnr_gain_db"])
    )
    gains.sort(key=key, reverse=True)
    sel.ranking = gains
    # A layer whose float version measured no better than int8 is never kept float for it.
    useful = [g for g in gains if g.get("top1_gain", 0.0) > 0 or g["sqnr_gain_db"] > 0]
    chosen, m = [], base
    best = (base, [])  # the best set measured, should time run out before the target holds
    for g in useful:
        if budget.expired():
            break
        chosen.append(g["name"])
        m = measure(chosen)
        budget.say("float layers", f"+ {g['name']} ({len(chosen)} float): {_describe_measure(m)}")
        if _better(m, best[0], target):
            best = (m, list(chosen))
        if target.met(m):
            break
    if not target.met(m):
        if not budget.exhausted:
            raise IntqError(
                f"hybrid precision: {target.describe()} is not reached even with "
                f"{len(chosen)} layers in float (every layer whose float gain was positive)"
            )
        m, chosen = best
        sel.budget_exhausted = True
    for name in list(reversed(chosen))[1:]:  # the last one added was needed to get there
        if budget.expired():
            break
        trial = [c for c in chosen if c != name]
        mt = measure(trial)
        if target.met(mt) or (sel.budget_exhausted and not _better(m, mt, target)):
            chosen, m = trial, mt
            budget.say("float layers", f"- {name} not needed: {_describe_measure(mt)}")
    sel.hybrid = m
    by_name = {g["name"]: g for g in gains}
    for name in chosen:
        g = by_name[name]
        reason = f"kept float alone: worst output part {g['sqnr_gain_db']:+.1f} dB"
        if "top1_gain" in g:
            reason += f", top-1 {g['top1_gain']:+.1f} points"
        sel.layers.append(
            {
                "name": name,
                "op": describe(name) if describe else None,
                "reason": reason,
                **{k: v for k, v in g.items() if k != "name"},
            }
        )
    return sel


def _describe_measure(m: dict) -> str:
    text = f"worst output part {m['sqnr_db']:.1f} dB"
    if "top1" in m:
        text += f", top-1 {100 * m['top1']:.2f} % (float {100 * m['top1_fp32']:.2f} %)"
    return text


def _better(a: dict, b: dict, target: Target) -> bool:
    """Is measurement ``a`` closer to ``target`` than ``b``?"""
    if target.max_drop is not None and a.get("top1") != b.get("top1"):
        return a["top1"] > b["top1"]
    return a["sqnr_db"] > b["sqnr_db"]


def explicit_selection(names, describe=None) -> Selection:
    """A :class:`Selection` for float layers the user named."""
    return Selection(
        layers=[
            {
                "name": n,
                "op": describe(n) if describe else None,
                "reason": "requested (--float-layers)",
            }
            for n in names
        ],
        target="requested",
    )


def search_module(model_path, input_shapes: dict | None, info, prepared, batch: int = 32):
    """``prepared`` imported again with ``batch`` samples per call, for faster search runs;
    ``prepared`` itself when the model does not take another batch size (a reshape that
    fixes it, different tensor names, an output without the batch axis)."""
    if info.batch_size != 1 or batch <= 1:
        return prepared
    shapes = {k: (batch,) + tuple(v[1:]) for k, v in info.inputs.items()}
    try:
        model = load_onnx(model_path)
        for inp in model.graph.input:  # the file may fix the batch axis to 1
            if inp.name in shapes:
                inp.type.tensor_type.shape.dim[0].dim_param = "batch"
        del model.graph.value_info[:]
        for out in model.graph.output:
            if out.type.tensor_type.shape.dim:
                out.type.tensor_type.shape.dim[0].dim_param = "batch"
        mod, _ = import_proto(model, model_path, shapes)
        batched = prepare(mod)
    except Exception:  # noqa: BLE001 - any failure: search at the model's own batch size
        return prepared
    same = [v.name for v in analyze(batched["main"]).points] == [
        v.name for v in analyze(prepared["main"]).points
    ]
    out_b, out_1 = batched["main"].ret_ty, prepared["main"].ret_ty
    shape_b = getattr(out_b, "shape", None)
    shape_1 = getattr(out_1, "shape", None)
    try:
        dims_b = [int(d) for d in shape_b.values]
        dims_1 = [int(d) for d in shape_1.values]
    except (AttributeError, TypeError):
        return prepared
    if not same or dims_b[:1] != [batch] or dims_b[1:] != dims_1[1:]:
        return prepared
    return batched


def check_float_layers(config, prepared) -> None:
    """Fail early (before calibration) on float layers ``config`` cannot have: names that are
    no quantization point of ``prepared``, or ``auto`` without a target."""
    wanted = parse_float_layers(config.float_layers)
    if wanted == "auto":
        Target(config.max_drop, config.min_sqnr)
        return
    known = [v.name for v in analyze(prepared["main"]).points]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise IntqError(
            f"--float-layers: {', '.join(unknown)} is not a quantization point of "
            f"the model (they are: {', '.join(known)})"
        )
