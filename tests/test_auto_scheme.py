"""``--scheme auto``: every candidate calibrated in one run, the multi-gated model, and the
per-layer choice by measured output error."""

import numpy as np
import pytest
from conftest import run_vm, three_conv_model

import tvm_intq
from tvm_intq.calibration import SampleSet
from tvm_intq.core import intmath
from tvm_intq.core.metrics import sqnr_db
from tvm_intq.core.schemes import PerLayer, get_scheme
from tvm_intq.relay_passes import Annotate, float_ops
from tvm_intq.search import scheme_choice

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


def test_per_layer_scheme_defaults_and_lookup():
    s = PerLayer({"a": "pow2"})
    assert s.for_tensor("a").name == "pow2" and s.for_tensor("b").name == "hybrid-asym"
    assert get_scheme("auto").for_tensor("anything").name == "hybrid-asym"
