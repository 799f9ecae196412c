"""``--scheme auto``: a quantization scheme per layer, chosen by measured error.

Every candidate (symmetric, hybrid-asym, pow2) is calibrated from the same statistics (one
two-pass calibration run, each candidate's own range rule on each tensor). A *multi-gated*
fake-quantized model, compiled once, holds all of them at once: at each quantization point
``p`` the value read outside its group is

    t + sum_k g[p, k] * (dequantize_k(quantize_k(t)) - t)

and each conv/dense weight of ``p``'s group ``W + sum_k g[p, k] * (W_k - W)`` with ``W_k`` the
candidate's fake-quantized weight, and each bias the one the candidate holds (pow2 rounds
it); the gates ``g`` are an input, so one-hot rows select one scheme per point and a
configuration costs one run, not a compile
(:class:`~tvm_intq.relay_passes.GateQuantization`, the same pass hybrid precision uses).

The search, on the calibration samples (unlabelled: the measure is the SQNR against the float
model of the worst output part, :class:`~tvm_intq.search.float_layers.Scorer`, so no held-out
data is used to choose): every uniform configuration first, the
best as the start, then one sweep of coordinate descent over the points in program order,
each point switching to the candidate that raises the output SQNR most. Every integer kernel
takes any mix of scales (a requantize multiplier is only a pure shift where both sides are
pow2), so all three are open to every layer on every target.

Then the answer is checked on the integer programs themselves, on calibration samples the
descent did not see (the same ones when there are no others): the choice and each uniform
configuration lowered, built and run; the best of them is kept. The simulation is the QDQ
model, and a mixed choice's integer program drifts from it (lookup tables and integer
rounding where the QDQ model computes in float: PP-OCR cls, 100 points, one point switched
from pow2 to hybrid-asym: 35.6 dB simulated, 26.5 dB as integers), while a descent that
takes the best of 200 noisy scores overrates its winner (cls, 32 samples: 49.8 dB simulated,
29.5 dB as integers on the same samples, 20.5 dB on the evaluation set, where uniform
hybrid-asym gives 28.0 dB). The check makes ``auto`` never worse, on the samples it checks,
than the best single scheme it tried.
"""

from __future__ import annotations

import numpy as np

from tvm_intq.calibration import Calibrator, SampleSet, for_scheme, get_calibrator
from tvm_intq.compiler.runner import Runner
from tvm_intq.compiler.steps import batch_size, build_for_values, calibrate, input_names, lower
from tvm_intq.core.config import QuantConfig
from tvm_intq.core.schemes import PerLayer, get_scheme
from tvm_intq.relay_passes import GateQuantization
from tvm_intq.search.budget import Budget, timed
from tvm_intq.search.float_layers import Scorer, run_outputs

CANDIDATES = ("symmetric", "hybrid-asym", "pow2")
GATES = "scheme_gates"


class EachRule(Calibrator):
    """Several range rules from one set of statistics: ``{key: (lo, hi)}`` per tensor.
    ``rules`` is ``{key: (scheme, calibrator)}``: each key's range is the calibrator as the
    scheme wraps it (pow2: its exponent search), symmetric if the scheme's activations are."""

    name = "each-rule"
    needs_histogram = True

    def __init__(self, rules: dict):
        super().__init__()
        self.rules = {k: (for_scheme(c, s), s.symmetric_activations) for k, (s, c) in rules.items()}
        bins = {cal.num_bins for cal, _ in self.rules.values()}
        if len(bins) != 1:
            raise ValueError(f"one statistics run needs one histogram size, got {sorted(bins)}")
        self.num_bins = bins.pop()

    def select_range(self, stats, symmetric):  # not used: compute_range is overridden
        raise NotImplementedError

    def compute_range(self, stats, symmetric):
        return {k: cal.compute_range(stats, sym) for k, (cal, sym) in self.rules.items()}


def calibrate_all(
    prepared,
    samples: SampleSet,
    calibrator: str,
    progress: bool = False,
    candidates=CANDIDATES,
    **options,
) -> dict:
    """``{scheme name: {tensor: (lo, hi)}}`` for every candidate, from one calibration run."""
    cal = get_calibrator(calibrator, **options)
    each = EachRule({n: (get_scheme(n), cal) for n in candidates})
    both = calibrate(prepared, samples, each, progress=progress)
    return {n: {t: r[n] for t, r in both.items()} for n in candidates}


def multi_gated_module(prepared, ranges_by: dict, candidates=CANDIDATES):
    """The multi-gated model (module docstring; :class:`~tvm_intq.relay_passes.GateQuantization`
    with a candidate per scheme): ``main(inputs..., scheme_gates)`` with ``scheme_gates:
    float32[len(points) * len(candidates)]``, row ``p`` for ``points[p]``. Returns
    ``(module, point names)``."""
    gate = GateQuantization([(c, ranges_by[c]) for c in candidates], GATES)
    return gate(prepared), gate.points


def choose(
    prepared,
    ranges_by: dict,
    samples: SampleSet,
    candidates=CANDIDATES,
    max_samples: int = 256,
    budget: Budget | None = None,
) -> tuple[PerLayer, dict, dict]:
    """Search a scheme per point (module docstring) on up to ``max_samples`` of ``samples``
    (fewer when the ``budget``, :class:`~tvm_intq.search.budget.Budget`, would not hold them;
    when its time is out the descent stops where it is), then keep the best of the choice and
    the uniform configurations as integer programs, on up to as many samples again that the
    descent did not use.

    Returns ``(PerLayer scheme, merged ranges, report)``: the ranges of each point come from
    its chosen scheme's calibration; the report lists the choice per point, the simulated
    worst-output-part SQNR of each uniform configuration and of the descent's choice, and the
    integer programs' (``integer_output_sqnr_db``), with what was kept (``kept``: ``"auto"``
    or a scheme name).
    """
    budget = budget or Budget(None)
    (mod, points), seconds = timed(multi_gated_module, prepared, ranges_by, candidates)
    k = len(candidates)
    runner, build_s = timed(lambda: Runner(build_for_values(mod), input_names(prepared) + [GATES]))
    budget.say("scheme auto", f"gated model compiled ({seconds + build_s:.0f} s)")
    batch = batch_size(prepared)

    def run(choice, few) -> list[np.ndarray]:
        g = np.zeros(len(points) * k, np.float32)
        for i, j in enumerate(choice):
            if j is not None:
                g[i * k + j] = 1.0
        return run_outputs(runner, few, batch, {GATES: g})

    probe = samples.head(min(batch * 2, samples.num_samples))
    _, seconds = timed(run, [None] * len(points), probe)
    runs = 1 + k + (k - 1) * len(points)
    n = budget.samples_for(runs, seconds / probe.num_samples, 0.5, max_samples)
    few = samples.head(n) if samples.num_samples > n else samples
    ref = run([None] * len(points), few)
    scorer = Scorer(prepared)
    sqnr = {}

    def score(choice) -> float:
        key = tuple(choice)
        if key not in sqnr:
            sqnr[key] = scorer(run(choice, few), ref)["sqnr_db"]
        return sqnr[key]

    uniform = {}
    for j, c in enumerate(candidates):
        uniform[c] = score([j] * len(points))
        budget.say("scheme auto", f"all {c}: worst output part {uniform[c]:.1f} dB")
    start = max(range(k), key=lambda j: uniform[candidates[j]])
    choice = [start] * len(points)
    best = score(choice)
    stopped = None
    for i in range(len(points)):
        if budget.expired():
            stopped = i
            budget.say("scheme auto", f"time is up after {i} of {len(points)} points")
            break
        for j in range(k):
            if j == choice[i]:
                continue
            trial = choice[:i] + [j] + choice[i + 1 :]
            if score(trial) > best + 1e-6:
                choice, best = trial, score(trial)
        budget.say(
            "scheme auto",
            f"{i + 1}/{len(points)} {points[i]}: {candidates[choice[i]]} "
            f"(worst output part {best:.1f} dB)",
        )

    def configuration(choice):
        chosen = {p: candidates[j] for p, j in zip(points, choice)}
        default = candidates[choice[0] if len(set(choice)) == 1 else start]
        scheme = PerLayer(chosen, default=default)
        ranges = {t: ranges_by[chosen.get(t, default)][t] for t in ranges_by[candidates[0]]}
        return chosen, scheme, ranges

    check = samples.after(few.num_samples).head(few.num_samples) if len(samples) > len(few) else few
    check_ref = run([None] * len(points), check)
    tried = {"auto": choice, **{c: [j] * len(points) for j, c in enumerate(candidates)}}
    integer = {}
    for name, c in tried.items():
        if name != "auto" and c == choice:
            integer[name] = integer["auto"]
            continue
        _, scheme, ranges = configuration(c)
        program = lower(prepared, ranges, QuantConfig(scheme=scheme))[1]
        out = run_outputs(
            Runner(build_for_values(program), input_names(prepared)), check, batch, {}
        )
        integer[name] = scorer(out, check_ref)["sqnr_db"]
        budget.say("scheme auto", f"as integers, {name}: worst output part {integer[name]:.1f} dB")
    kept = max(tried, key=lambda name: (integer[name], name == "auto"))
    chosen, scheme, ranges = configuration(tried[kept])
    report = {
        "candidates": list(candidates),
        "choice": chosen,
        "simulated_output_sqnr_db": {"uniform": uniform, "auto": best},
        "integer_output_sqnr_db": {
            "uniform": {c: integer[c] for c in candidates},
            "auto": integer["auto"],
        },
        "kept": kept,
        "search_samples": few.num_samples,
        "check_samples": check.num_samples,
    }
    if stopped is not None:
        report["budget_exhausted_after_points"] = stopped
    return scheme, ranges, report
