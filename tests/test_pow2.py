"""The power-of-two shared-exponent scheme (S3, INT-SE): exponent search, bias window,
pure-shift requantize, and a folded pow2 model bit-exact with the numpy reference."""

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

import tvm_intq
from tvm_intq.calibration import SampleSet, TensorStats, get_calibrator
from tvm_intq.calibration.pow2_exponent import Pow2Exponent
from tvm_intq.core import intmath
from tvm_intq.core.metrics import sqnr_db
from tvm_intq.core.schemes import PowerOfTwo, get_scheme
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.relay_passes import float_ops
from tvm_intq.relay_passes.analysis.accumulators import accumulator_report
from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.rebuild import bindings_of
from tvm_intq.relay_passes.ops.requantize import requant_of

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


# ---------------------------------------------------------------------------------------------
# intmath: exponents, INT-SE, the pure shift
# ---------------------------------------------------------------------------------------------
def test_pow2_exponent_of():
    got = intmath.pow2_exponent_of([1.0, 0.25, 8.0, 0.3, 0.0, -2.0, 2.0**-40])
    n = intmath.NOT_POW2
    assert got.tolist() == [0, -2, 3, n, n, n, -40]


@pytest.mark.parametrize(
    "t, e", [(1.0, -6), (127.0, 0), (127.0001, 1), (3.0, -5), (127 * 2.0**-5, -5), (0.0, 0)]
)
def test_minmax_exponent_is_the_smallest_covering_one(t, e):
    # 127 * 2^e >= t for the smallest e: 1.0 -> 127/64 = 1.98 (127/128 < 1).
    assert intmath.pow2_minmax_exponent(t) == e


def test_exponent_search_by_hand():
    # 9999 values at 19/64 = 0.296875 and one at 2.5. The min/max exponent is s = -5
    # (2.5/127 = 2^-5.67). Per candidate (values D * 2^e, D in [-127, 127]):
    #   e = -7: 0.296875 = 38 * 2^-7 exact;  2.5 clips to 127/128:  err^2 = (2.5 - 0.9921875)^2
    #   e = -6: 0.296875 = 19 * 2^-6 exact;  2.5 clips to 127/64:   err^2 = 0.515625^2
    #   e = -5: 9.5 -> 10 (half to even): 0.3125, err 1/64;  2.5 = 80 * 2^-5 exact
    #   e = -4: 4.75 -> 5: 0.3125, err 1/64;                 2.5 = 40 * 2^-4 exact
    #   e = -3: 2.375 -> 2: 0.25, err 3/64;                  2.5 = 20 * 2^-3 exact
    x = np.array([19 / 64, 2.5])
    w = np.array([9999.0, 1.0])
    best, table = intmath.pow2_search(x, intmath.pow2_minmax_exponent(2.5), w)
    want = {
        -7: (2.5 - 127 / 128) ** 2 / 1e4,
        -6: (2.5 - 127 / 64) ** 2 / 1e4,
        -5: 9999 * (1 / 64) ** 2 / 1e4,
        -4: 9999 * (1 / 64) ** 2 / 1e4,
        -3: 9999 * (3 / 64) ** 2 / 1e4,
    }
    assert set(table) == set(want)
    for e, v in want.items():
        assert table[e] == pytest.approx(v, rel=1e-12)
    assert best == -6  # one below the min/max exponent: the outlier is cheaper clipped
    # Ties go to the larger exponent (less clipping): here -5 and -4 tie.
    best, _ = intmath.pow2_search(
        np.array([19 / 64, 2.5]), -5, np.array([1.0, 0.0]), span=0, lowest=-5
    )
    assert best == -5


def test_exponent_search_window_limits():
    x = np.array([1000.0])  # wants e = 3, but the window is [-2, 1]
    assert intmath.pow2_search(x, 3, lowest=-2, highest=1)[0] == 1
    x = np.array([1e-6])  # wants a tiny exponent; the lowest allowed is -2
    assert intmath.pow2_search(x, -25, lowest=-2, highest=5)[0] == -2


@pytest.mark.parametrize("k", [-20, -7, -1, 0])
def test_fixed_point_of_a_power_of_two_is_a_pure_shift(k):
    mul, add, shift = intmath.fixed_point(2.0**k, 3.0, 2**20)
    assert int(mul) == 1 and int(shift) == -k
    assert int(add) == 3 * 2**-k + (2 ** (-k - 1) if k < 0 else 0)


@pytest.mark.parametrize("k", [1, 5])
def test_fixed_point_of_a_power_of_two_above_one_is_a_left_shift(k):
    mul, add, shift = intmath.fixed_point(2.0**k, 0.0, 2**20)
    assert int(mul) == 2**k and int(shift) == 0 and int(add) == 0
    acc = np.arange(-50, 50)
    np.testing.assert_array_equal((acc * int(mul) + int(add)) >> int(shift), acc * 2**k)


def test_fixed_point_mixed_channels():
    mul, _, shift = intmath.fixed_point(np.array([0.5, 0.3, 2.0**-12]), 0.0, 2**20)
    assert mul.tolist()[0] == 1 and shift.tolist()[0] == 1
    assert 2**30 <= mul.tolist()[1] < 2**31
    assert mul.tolist()[2] == 1 and shift.tolist()[2] == 12


def test_add_of_power_of_two_scales_is_exact():
    a, b, o = intmath.QParams(2.0**-5, 0), intmath.QParams(2.0**-7, 0), intmath.QParams(2.0**-4, 0)
    ar = intmath.add_requant(a, b, o)
    assert (ar.mul_a, ar.mul_b, ar.shift) == (4, 1, 3)  # (4 qa + qb + 4) >> 3
    qa, qb = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128))
    v = (qa * a.scale + qb * b.scale) / o.scale
    got = ar.apply(qa.astype(np.int8), qb.astype(np.int8)).astype(np.int64)
    np.testing.assert_array_equal(got, np.clip(np.floor(v + 0.5), -128, 127))


def test_accumulator_range_and_bits_by_hand():
    qw = np.array([[3, -2], [127, 127]], np.int8)  # output channel on axis 0, K = 2
    lo, hi = intmath.accumulator_range(qw, 0, -128, 127)
    assert lo.tolist() == [3 * -128 + -2 * 127, 127 * -128 * 2]
    assert hi.tolist() == [3 * 127 + -2 * -128, 127 * 127 * 2]
    lo, hi = intmath.accumulator_range(qw, 0, 0, 127)  # a ReLU input
    assert lo.tolist() == [-254, 0] and hi.tolist() == [381, 32258]
    assert intmath.signed_bits(-128, 127) == 8 and intmath.signed_bits(-129, 0) == 9
    assert intmath.signed_bits(0, 128) == 9 and intmath.signed_bits(-(2**31), 2**31 - 1) == 32
    assert intmath.signed_bits(0, 0) == 1


# ---------------------------------------------------------------------------------------------
# The scheme
# ---------------------------------------------------------------------------------------------
def test_scheme_is_registered_and_activations_are_powers_of_two():
    s = get_scheme("pow2")
    assert isinstance(s, PowerOfTwo) and s.symmetric_activations
    p = s.activation(-127 * 2.0**-5, 127 * 2.0**-5)
    assert (p.scale, p.zero_point) == (2.0**-5, 0)
    assert s.activation(0.0, 3.0).scale == 2.0**-5  # 3/127 -> 2^-5
    assert s.activation(-1e-12, 1e-12).scale > 0


def test_weights_share_one_exponent_per_layer_as_s3_says():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 4, 3, 3)) * np.array([1, 2, 4, 8, 0.1, 0.2, 3, 5])[:, None, None, None]
    qw, sw = get_scheme("pow2").weights(w, 0)
    assert qw.dtype == np.int8 and np.abs(qw.astype(int)).max() <= 127
    assert len(set(sw.tolist())) == 1 and intmath.pow2_exponent_of(sw[0]) != intmath.NOT_POW2
    s0 = intmath.pow2_minmax_exponent(np.abs(w).max())
    assert intmath.pow2_search(w.ravel(), s0)[0] == int(np.log2(sw[0]))
    _, sw_c = PowerOfTwo(per_channel=True).weights(w, 0)
    assert len(set(sw_c.tolist())) > 1  # the variant searches each channel


def test_bias_exponent_is_constrained_to_the_accumulator_window():
    s = PowerOfTwo(bias_bits=8)
    s_acc = np.full(3, 2.0**-12)  # s_t = -12: s_b in [-12, -5]
    small = np.array([0.001, -0.002, 0.0005])  # wants an exponent below -12: gets -12
    np.testing.assert_allclose(s.bias(small, s_acc), np.rint(small * 2**12) / 2**12)
    big = np.array([1.81, -0.3, 0.05])  # wants -6 (1.81/127 = 2^-6.1): allowed
    held = s.bias(big, s_acc)
    assert np.abs(held - big).max() <= 2.0**-7
    huge = np.array([10.0, 0.0, 0.0])  # wants -3: the window ends at -5, so 127 * 2^-5 = 3.97
    assert s.bias(huge, s_acc)[0] == pytest.approx(127 * 2.0**-5)
    assert PowerOfTwo().bias(huge, s_acc)[0] == 10.0  # 16-bit data (the default) holds it
    assert s.bias(big, np.full(3, 0.3)) is None  # a non-pow2 input (per-layer mix): no window


def test_calibration_wrapper_searches_around_the_calibrators_exponent():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, 100_000), [40.0]])
    st = TensorStats.from_array(x, name="t")
    wrap = Pow2Exponent(get_calibrator("minmax"))
    lo, hi = wrap.compute_range(st, symmetric=True)
    found = wrap.searches["t"]
    assert found["initial"] == intmath.pow2_minmax_exponent(40.0) == -1
    assert set(found["mse"]) == set(range(-3, 2))
    assert hi == -lo == 127 * 2.0 ** found["chosen"]
    assert found["chosen"] == min(found["mse"], key=found["mse"].get)
    assert found["chosen"] < found["initial"]  # the lone outlier is clipped
    assert get_scheme("pow2").activation(lo, hi).scale == 2.0 ** found["chosen"]


# ---------------------------------------------------------------------------------------------
# A folded pow2 model: pure shifts, bit-exact with the reference
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folded():
    rng = np.random.default_rng(2)
    # conv 3x3 + bias + relu, then two 1x1 convs of it added (a residual-style add of two
    # differently scaled int8 tensors).
    inits = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)),
        "b1": rng.normal(0, 0.5, 8),
        "w2": rng.normal(0, 0.3, (6, 8, 1, 1)),
        "b2": rng.normal(0, 0.2, 6),
        "w3": rng.normal(0, 0.05, (6, 8, 1, 1)),
        "b3": rng.normal(0, 0.1, 6),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c2", "c3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    mod = from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    prepared = tvm_intq.prepare(mod)
    samples = SampleSet({"x": rng.normal(0, 1, (16, 3, 6, 6)).astype(np.float32)})
    ranges = tvm_intq.calibrate(prepared, samples, "minmax", scheme="pow2", progress=False)
    qdq, integer = tvm_intq.lower(prepared, ranges, tvm_intq.QuantConfig(scheme="pow2"))
    return prepared, qdq, integer, samples


def test_every_conv_requantize_is_a_pure_shift(folded):
    _, _, integer, _ = folded
    assert float_ops(integer) == []
    report = accumulator_report(integer)
    assert len(report) == 3 and all(r["mul_is_one"] for r in report)
    binds = bindings_of(integer["main"])
    defs = {b.var: b.value for b in binds}

    def source_op(var):
        return op_name(defs.get(var)) if isinstance(var, relax.Var) else None

    muls = []  # conv -> intq.requantize(acc, MUL, ...): the MUL of each conv requantize
    for b in binds:
        rq = requant_of(b.value)
        if rq is not None and source_op(b.value.args[0]) == "relax.nn.conv2d":
            muls.append(rq.mul)
    assert len(muls) == 3 and all(np.all(m == 1) for m in muls)
    for r in report:  # a 3x3x3 conv of int8 needs far fewer than 32 bits
        assert not r["overflows_int32"] and r["acc_bits"] < 24 and r["shift_min"] >= 0


def test_folded_pow2_model_is_bit_exact_with_the_reference(folded):
    prepared, qdq, integer, samples = folded
    vm = relax.VirtualMachine(tvm_intq.build(integer), tvm.cpu())
    vm_float = relax.VirtualMachine(tvm_intq.build(prepared), tvm.cpu())
    x = samples.arrays["x"]
    for i in range(0, 8, 2):
        xb = x[i : i + 2]
        got = vm["main"](tvm.runtime.tensor(xb)).numpy()
        np.testing.assert_array_equal(got, run_reference(integer, {"x": xb}))
        assert sqnr_db(vm_float["main"](tvm.runtime.tensor(xb)).numpy(), got) > 25.0


def test_pow2_bias_is_an_integer_in_accumulator_units(folded):
    # S3: the bias exponent s_b >= s_t = s_in + s_w, so the bias is D * 2^(s_b - s_t) whole
    # accumulator steps, joining the accumulator by a left shift.
    prepared, qdq, _, _ = folded
    defs = {b.var: b.value for b in bindings_of(qdq["main"])}
    checked = 0
    for b in bindings_of(qdq["main"]):
        if op_name(b.value) != "relax.add" or const_value(b.value.args[1]) is None:
            continue
        conv = defs[b.value.args[0]]
        s_in = const_value(defs[conv.args[0]].args[1])
        sw = const_value(defs[conv.args[1]].args[1])
        steps = const_value(b.value.args[1]).reshape(-1).astype(np.float64) / (
            float(s_in) * sw.astype(np.float64)
        )
        np.testing.assert_array_equal(steps, np.rint(steps))
        assert np.all(np.abs(steps) <= 32767 * 2**7)
        checked += 1
    assert checked == 3
