"""``--scheme auto``: every candidate calibrated in one run, the multi-gated model, and the
per-layer choice by measured output error."""

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_intq
from tvm_intq import auto_scheme, intmath
from tvm_intq.calibration import SampleSet
from tvm_intq.metrics import sqnr_db
from tvm_intq.relay_passes import Annotate, float_ops
from tvm_intq.schemes import PerLayer, get_scheme

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


@pytest.fixture(scope="module")
def small():
    """conv+relu (one-sided: asymmetric helps) -> conv -> tanh (symmetric) -> conv."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(0, 0.4, (8, 3, 3, 3)), "b1": rng.normal(0.3, 0.3, 8),
             "w2": rng.normal(0, 0.3, (8, 8, 1, 1)), "b2": rng.normal(0, 0.2, 8),
             "w3": rng.normal(0, 0.3, (4, 8, 1, 1)), "b3": rng.normal(0, 0.2, 4)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             helper.make_node("Tanh", ["c2"], ["t2"]),
             helper.make_node("Conv", ["t2", "w3", "b3"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    prepared = tvm_intq.prepare(from_onnx(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)])))
    samples = SampleSet({"x": rng.normal(0, 1, (32, 3, 6, 6)).astype(np.float32)})
    by_scheme = auto_scheme.calibrate_all(prepared, samples, "minmax")
    return prepared, samples, by_scheme


def _run(mod, x, extra=()):
    vm = relax.VirtualMachine(tvm_intq.build(mod), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(e) for e in extra]).numpy()


def test_one_calibration_gives_every_candidates_ranges(small):
    prepared, samples, by = small
    assert set(by) == set(auto_scheme.CANDIDATES)
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
    mod, points = auto_scheme.multi_gated_module(prepared, by)
    k = len(auto_scheme.CANDIDATES)
    x = samples.arrays["x"][:2]
    zeros = np.zeros(len(points) * k, np.float32)
    np.testing.assert_array_equal(_run(mod, x, [zeros]), _run(prepared, x))
    for j, name in enumerate(auto_scheme.CANDIDATES):
        g = zeros.copy()
        g[j::k] = 1.0
        qdq = Annotate(by[name], name)(prepared)
        # pow2 also rounds its biases, which the simulation leaves float: a looser bound.
        tol = 0.05 if name == "pow2" else 1e-3
        np.testing.assert_allclose(_run(mod, x, [g]), _run(qdq, x), atol=tol, rtol=tol)


def test_choice_is_at_least_the_best_uniform_scheme_and_folds_to_integers(small):
    prepared, samples, by = small
    scheme, ranges, report = auto_scheme.choose(prepared, by, samples)
    sim = report["simulated_output_sqnr_db"]
    assert sim["auto"] >= max(sim["uniform"].values())
    assert isinstance(scheme, PerLayer) and set(report["choice"].values()) <= set(auto_scheme.CANDIDATES)
    for p, name in report["choice"].items():
        assert ranges[p] == by[name][p]
    _, integer = tvm_intq.lower(prepared, ranges, tvm_intq.QuantConfig(scheme=scheme))
    assert float_ops(integer) == []
    x = samples.arrays["x"][:8]
    got = np.concatenate([_run(integer, x[i:i + 2]) for i in range(0, 8, 2)])
    ref = np.concatenate([_run(prepared, x[i:i + 2]) for i in range(0, 8, 2)])
    assert sqnr_db(ref, got) >= sim["auto"] - 3.0


def test_per_layer_scheme_defaults_and_lookup():
    s = PerLayer({"a": "pow2"})
    assert s.for_tensor("a").name == "pow2" and s.for_tensor("b").name == "hybrid-asym"
    assert get_scheme("auto").for_tensor("anything").name == "hybrid-asym"
