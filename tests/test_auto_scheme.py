"""``--scheme auto``: every candidate calibrated in one run, the multi-gated model, and the
per-layer choice by measured output error."""

import numpy as np
import pytest
from conftest import run_vm, three_conv_model

import tvm_intq
from tvm_intq.calibration import SampleSet
from tvm_intq.compiler.runner import Runner
from tvm_intq.core import intmath
from tvm_intq.core.metrics import sqnr_db
from tvm_intq.core.schemes import PerLayer, get_scheme
from tvm_intq.relay_passes import Annotate, float_ops
from tvm_intq.search import scheme_choice
from tvm_intq.search.float_layers import run_outputs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required"),
]


@pytest.fixture(scope="module")
def small():
    """conv+relu (one-sided: asymmetric helps) -> conv -> tanh (symmetric) -> conv."""
    rng = np.random.default_rng(0)
    prepared = three_conv_model(rng, bias_mean=0.3)
    samples = SampleSet({"x": rng.normal(0, 1, (32, 3, 6, 6)).astype(np.float32)})
    by_scheme = scheme_choice.calibrate_all(prepared, samples, "minmax")
    return prepared, samples, by_scheme


def test_one_calibration_gives_every_candidates_ranges(small):
    prepared, samples, by = small
    assert set(by) == set(scheme_choice.CANDIDATES)
    for name, (lo, hi) in by["symmetric"].items():
        assert lo == -hi
        assert by["hybrid-asym"][name][0] >= lo and by["hybrid-asym"][name][1] <= hi
        plo, phi = by["pow2"][name]
        assert plo == -phi and intmath.pow2_exponent_of(phi / 127) != intmath.NOT_POW2
    # The same ranges as calibrating each scheme on its own.
    alone = tvm_intq.calibrate(prepared, samples, "minmax", scheme="hybrid-asym", progress=False)
    assert alone == by["hybrid-asym"]


def test_one_hot_gates_reproduce_each_schemes_qdq_model(small):
    prepared, samples, by = small
    mod, points = scheme_choice.multi_gated_module(prepared, by)
    k = len(scheme_choice.CANDIDATES)
    x = samples.arrays["x"][:2]
    zeros = np.zeros(len(points) * k, np.float32)
    np.testing.assert_array_equal(run_vm(mod, x, [zeros]), run_vm(prepared, x))
    for j, name in enumerate(scheme_choice.CANDIDATES):
        g = zeros.copy()
        g[j::k] = 1.0
        qdq = Annotate(by[name], name)(prepared)
        # pow2 also rounds its biases, which the simulation leaves float: a looser bound.
        tol = 0.05 if name == "pow2" else 1e-3
        np.testing.assert_allclose(run_vm(mod, x, [g]), run_vm(qdq, x), atol=tol, rtol=tol)


def test_choice_is_at_least_the_best_uniform_scheme_and_folds_to_integers(small):
    prepared, samples, by = small
    scheme, ranges, report = scheme_choice.choose(prepared, by, samples)
    sim = report["simulated_output_sqnr_db"]
    assert sim["auto"] >= max(sim["uniform"].values())
    assert isinstance(scheme, PerLayer) and set(report["choice"].values()) <= set(
        scheme_choice.CANDIDATES
    )
    for p, name in report["choice"].items():
        assert ranges[p] == by[name][p]
    _, integer = tvm_intq.lower(prepared, ranges, tvm_intq.QuantConfig(scheme=scheme))
    assert float_ops(integer) == []
    x = samples.arrays["x"][:8]
    got = np.concatenate([run_vm(integer, x[i : i + 2]) for i in range(0, 8, 2)])
    ref = np.concatenate([run_vm(prepared, x[i : i + 2]) for i in range(0, 8, 2)])
    assert sqnr_db(ref, got) >= sim["auto"] - 3.0


def _integer_sqnr(prepared, scheme, ranges, samples) -> float:
    _, integer = tvm_intq.lower(prepared, ranges, tvm_intq.QuantConfig(scheme=scheme))
    ref, got = (
        run_outputs(Runner(tvm_intq.build(m), ["x"]), samples, 2, {})[0]
        for m in (prepared, integer)
    )
    return sqnr_db(ref, got)


def test_choice_is_checked_as_integers_on_samples_the_descent_did_not_see(small):
    """The kept configuration is the best of the descent's choice and every uniform scheme as
    integer programs, measured on the 16 calibration samples after the 16 searched; the
    report's figure is the returned program's own on those samples."""
    prepared, samples, by = small
    scheme, ranges, report = scheme_choice.choose(prepared, by, samples, max_samples=16)
    assert (report["search_samples"], report["check_samples"]) == (16, 16)
    ints = report["integer_output_sqnr_db"]
    kept = ints["auto"] if report["kept"] == "auto" else ints["uniform"][report["kept"]]
    assert kept >= max(ints["uniform"].values())
    got = _integer_sqnr(prepared, scheme, ranges, samples.after(16))
    assert got == pytest.approx(kept, abs=1e-4)
    assert (
        got
        >= max(
            _integer_sqnr(prepared, get_scheme(c), by[c], samples.after(16))
            for c in scheme_choice.CANDIDATES
        )
        - 1e-4
    )


def test_a_choice_worse_as_integers_than_a_uniform_scheme_is_not_kept(small, monkeypatch):
    """The simulation can overrate a mixed choice (its integer program drifts from the QDQ
    model, and the descent keeps the best of many noisy scores): when the choice's integer
    program is worse than a uniform one, the uniform scheme is what comes back."""
    prepared, samples, by = small
    real = scheme_choice.lower

    def spoiled(prepared, ranges, config):  # the mixed choice's program gets 8x coarser scales
        if len(set(config.scheme.choices.values())) > 1:
            ranges = {t: (8 * lo, 8 * hi) for t, (lo, hi) in ranges.items()}
        return real(prepared, ranges, config)

    monkeypatch.setattr(scheme_choice, "lower", spoiled)
    scheme, ranges, report = scheme_choice.choose(prepared, by, samples, max_samples=16)
    assert len(set(report["choice"].values())) == 1
    ints = report["integer_output_sqnr_db"]
    best = max(ints["uniform"], key=ints["uniform"].get)
    assert ints["auto"] < ints["uniform"][best] and report["kept"] == best
    assert set(report["choice"].values()) == {best} and ranges == by[best]
    assert scheme.for_tensor("anything").name == best


def test_per_layer_scheme_defaults_and_lookup():
    s = PerLayer({"a": "pow2"})
    assert s.for_tensor("a").name == "pow2" and s.for_tensor("b").name == "hybrid-asym"
    assert get_scheme("auto").for_tensor("anything").name == "hybrid-asym"
