"""PyTorch models without ONNX: ``torch.export`` -> TVM's frontend -> our canonical module.

* The bundled model from its PyTorch definition (:mod:`tvm_intq.bundled_model`, holding the
  weights of the bundled ONNX file) compiles to the same integer program as through ONNX: the same
  quantization points and names, the same calibration ranges, the same constants, and the
  same outputs bit for bit.
* A torchvision-style block set built here (conv-bn-relu, inverted residual with depthwise
  conv and hardswish, squeeze-excitation gate, adaptive average pool, linear) compiles
  integer-only, bit for bit with the numpy reference of its integer program.
* Models quantized by PyTorch's own pt2e flow (torchao's ``prepare_pt2e``/``convert_pt2e``
  with the XNNPACK quantizer) import with their own scales, fold integer-only and match
  PyTorch's own quantized output within one quantization step on >= 99 % of the elements.
  Measured on this machine (``-s`` prints it): the bundled model's output codes agree on all
  3,000 elements of 300 held-out digits; the block set's (int8 and uint8 activations) on
  98.0 % of 960, and all 960 are within one step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from tvm_intq import api  # noqa: E402
from tvm_intq.bundled_model import bundled_model  # noqa: E402
from tvm_intq.calibration import SampleSet  # noqa: E402
from tvm_intq.compiler.runner import Runner  # noqa: E402
from tvm_intq.demo import bundled  # noqa: E402
from tvm_intq.errors import IntqError  # noqa: E402
from tvm_intq.evaluation.evaluate import describe  # noqa: E402
from tvm_intq.evaluation.reference import run_reference  # noqa: E402
from tvm_intq.frontends import import_model  # noqa: E402
from tvm_intq.frontends.onnx import import_onnx  # noqa: E402
from tvm_intq.frontends.prequantized import import_prequantized, is_prequantized_file  # noqa: E402
from tvm_intq.frontends.torch import (  # noqa: E402
    from_torch,
    import_exported,
    import_quantized_program,
    is_quantized_program,
)
from tvm_intq.relay_passes import analyze, float_ops  # noqa: E402
from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name  # noqa: E402
from tvm_intq.relay_passes.analysis.rebuild import bindings_of  # noqa: E402

pytestmark = pytest.mark.integration  # whole models, boards or processes

HELDOUT = np.load(bundled("heldout.npz"))
CALIB = np.load(bundled("calib.npz"))["input"]


class Input(nn.Module):
    """``forward(input)``: the bundled ONNX model's input name, which torch.export keeps."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input):  # noqa: A002 - the name is the point
        return self.model(input)


@pytest.fixture(scope="module")
def mnist():
    return bundled_model()


def run(integer, x, name="input"):
    runner = Runner(api.build(integer), [name])
    return np.concatenate([runner({name: x[i : i + 1]})[0] for i in range(len(x))])


def points(prepared):
    plan = analyze(prepared["main"])
    return [
        (v.name, "input" if plan.nodes[v].role == "input" else describe(plan, v))
        for v in plan.points
    ]


def constants(mod):
    """Every constant argument of ``main``'s calls, as sorted (dtype, shape, bytes)."""
    out = []
    for b in bindings_of(mod["main"]):
        for a in getattr(b.value, "args", []):
            c = const_value(a)
            if c is not None:
                out.append((str(c.dtype), c.shape, np.ascontiguousarray(c).tobytes()))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# The bundled model: the same integer program through both frontends
# ---------------------------------------------------------------------------------------------
def test_bundled_model_has_the_onnx_models_quantization_points(mnist):
    """Hardswish as x * (clip(x + 3, 0, 6) / 6), ReLU6 as maximum/minimum, linear as
    matmul + bias, mean over the spatial axes: every layer group and name as from ONNX."""
    torch_mod, info = from_torch(mnist, torch.zeros(1, 1, 28, 28), input_names=["input"])
    onnx_mod, _ = import_onnx(bundled("mnist_cnn.onnx"))
    assert info.inputs == {"input": (1, 1, 28, 28)}
    # (in another order: torch.export puts tanh right after its conv, ONNX after both branches)
    assert sorted(points(api.prepare(torch_mod))) == sorted(points(api.prepare(onnx_mod)))


@pytest.mark.integration
def test_bundled_model_compiles_to_the_same_integer_program_as_through_onnx(mnist):
    torch_mod, _ = from_torch(Input(mnist), torch.zeros(1, 1, 28, 28))
    onnx_mod, _ = import_onnx(bundled("mnist_cnn.onnx"))
    calib = SampleSet({"input": CALIB[:32]})
    x = HELDOUT["input"][:64]
    prepared = [api.prepare(m) for m in (torch_mod, onnx_mod)]
    for scheme in ("hybrid-asym", "pow2"):
        ranges = [api.calibrate(p, calib, scheme=scheme, progress=False) for p in prepared]
        assert ranges[0] == ranges[1]  # the float models agree bit for bit on calibration
        config = api.QuantConfig(scheme=scheme, integer_only=True)
        integer = [api.lower(p, ranges[1], config)[1] for p in prepared]
        assert constants(integer[0]) == constants(integer[1])
        np.testing.assert_array_equal(run(integer[0], x), run(integer[1], x), err_msg=scheme)


def test_a_saved_program_imports_like_the_module(mnist, tmp_path):
    path = tmp_path / "mnist.pt2"
    torch.export.save(torch.export.export(Input(mnist).eval(), (torch.zeros(1, 1, 28, 28),)), path)
    from_file, info = import_model(path)  # the CLI's import: dispatched on the suffix
    from_module, _ = from_torch(Input(mnist), torch.zeros(1, 1, 28, 28))
    assert info.inputs == {"input": (1, 1, 28, 28)} and not is_prequantized_file(path)
    assert constants(api.prepare(from_file)) == constants(api.prepare(from_module))
    assert points(api.prepare(from_file)) == points(api.prepare(from_module))
    with pytest.raises(IntqError, match="exported with shape 1x1x28x28"):
        import_model(path, {"input": (4, 1, 28, 28)})


def test_unreadable_programs_are_named(tmp_path):
    bad = tmp_path / "bad.pt2"
    bad.write_text("not a zip")
    with pytest.raises(IntqError, match="bad.pt2: not a readable torch.export program"):
        import_model(bad)
    with pytest.raises(IntqError, match="no such model file"):
        import_model(tmp_path / "missing.pt2")


# ---------------------------------------------------------------------------------------------
# Activations whose import must match the ONNX frontend's
# ---------------------------------------------------------------------------------------------
class Clamps(nn.Module):
    def forward(self, x):
        return torch.cat(
            [
                nn.functional.hardtanh(x, 0.0, 6.0),
                nn.functional.relu6(x),
                torch.clamp(x, min=-1.0),
                nn.functional.leaky_relu(x, 0.1),
            ],
            1,
        )


def test_clamps_import_as_maximum_minimum_with_their_positional_bounds():
    """TVM's own hardtanh converter reads the bounds from keyword arguments only
    (``hardtanh(x, 0.0, 6.0)`` became ``clip(x, -1, 1)``); ours emits the ONNX Clip form."""
    x = np.linspace(-8, 8, 2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    mod, _ = from_torch(Clamps(), torch.from_numpy(x))
    calls = [b.value for b in bindings_of(mod["main"]) if op_name(b.value)]
    bounds = [
        (op_name(c).split(".")[-1], float(const_value(c.args[1])))
        for c in calls
        if op_name(c) in ("relax.maximum", "relax.minimum")
    ]
    assert bounds == [
        ("maximum", 0.0),
        ("minimum", 6.0),
        ("maximum", 0.0),
        ("minimum", 6.0),
        ("maximum", -1.0),
    ]
    (leaky,) = [c for c in calls if op_name(c) == "relax.nn.leakyrelu"]
    assert float(leaky.attrs.alpha) == float(np.float32(0.1))  # the slope torch computes with
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    np.testing.assert_array_equal(
        vm["main"](tvm.runtime.tensor(x)).numpy(), Clamps()(torch.from_numpy(x)).numpy()
    )


# ---------------------------------------------------------------------------------------------
# A torchvision-style block set
# ---------------------------------------------------------------------------------------------
class ConvBnAct(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=nn.ReLU):
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            *([act()] if act else []),
        )


class SqueezeExcitation(nn.Module):
    """torchvision's MobileNetV3 gate: pool, 1x1 conv, ReLU, 1x1 conv, hardsigmoid, scale."""

    def __init__(self, ch, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.relu = nn.Conv2d(ch, squeeze, 1), nn.ReLU()
        self.fc2, self.gate = nn.Conv2d(squeeze, ch, 1), nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, ch, expand):
        super().__init__()
        self.block = nn.Sequential(
            ConvBnAct(ch, expand, 1, act=nn.Hardswish),
            ConvBnAct(expand, expand, 3, groups=expand, act=nn.Hardswish),
            SqueezeExcitation(expand, 8),
            ConvBnAct(expand, ch, 1, act=None),
        )

    def forward(self, x):
        return x + self.block(x)


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvBnAct(3, 16, 3, stride=2)
        self.ir = InvertedResidual(16, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.ir(self.stem(x))), 1))


@pytest.fixture(scope="module")
def blocks():
    torch.manual_seed(0)
    model = Blocks()
    for m in model.modules():  # BatchNorm away from the identity, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    x = np.random.default_rng(0).normal(0, 1, (128, 3, 32, 32)).astype(np.float32)
    return model.eval(), x


def test_blocks_compile_integer_only_bit_exact_with_the_reference(blocks):
    model, x = blocks
    mod, _ = from_torch(model, torch.from_numpy(x[:1]))
    prepared = api.prepare(mod)
    kinds = {d for _, d in points(prepared)}
    assert {
        "conv2d+add+relu",
        "lut(add,clip,divide,multiply)",
        "mean",
        "add",
        "matmul+add",
    } <= kinds, kinds  # BN folded, hardswish tabulated, pools, residual, fc
    assert any(d.startswith("conv2d+add+maximum+minimum") for d in kinds)  # hardsigmoid's clip
    ranges = api.calibrate(prepared, SampleSet({"x": x[:32]}), progress=False)
    _, integer = api.lower(prepared, ranges, api.QuantConfig(integer_only=True))
    depthwise = [
        b.value
        for b in bindings_of(prepared["main"])
        if op_name(b.value) == "relax.nn.conv2d" and int(b.value.attrs.groups) > 1
    ]
    assert [int(c.attrs.groups) for c in depthwise] == [32]  # the inverted residual's 3x3
    assert "multiply" in kinds  # the gate scales the block's activations
    got = run(integer, x[32:], "x")
    reference = np.concatenate(
        [run_reference(integer, {"x": x[i : i + 1]}) for i in range(32, 128)]
    )
    np.testing.assert_array_equal(got, reference)  # all 96 held-out samples, bit for bit
    with torch.no_grad():
        want = model(torch.from_numpy(x[32:])).numpy()
    sqnr = 10 * np.log10((want**2).sum() / ((want - got) ** 2).sum())
    assert sqnr >= 30.0, sqnr  # measured 43.7 dB


# ---------------------------------------------------------------------------------------------
# PyTorch's own quantization (pt2e)
# ---------------------------------------------------------------------------------------------
def pt2e_quantize(model, x_calib, example, activations=torch.int8):
    """``export -> prepare_pt2e(XNNPACK quantizer) -> calibrate -> convert_pt2e``, exported
    again: the program a PyTorch user deploys. Activations int8 (XNNPACK's) or uint8 (the
    same annotations with a [0, 255] spec, as x86 quantizers write them)."""
    pt2e = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
    xnnpack = pytest.importorskip("torchao.testing.pt2e._xnnpack_quantizer")
    config = xnnpack.get_symmetric_quantization_config(is_per_channel=True)
    if activations == torch.uint8:
        spec = dataclasses.replace(
            config.input_activation, dtype=torch.uint8, quant_min=0, quant_max=255
        )
        config = dataclasses.replace(config, input_activation=spec, output_activation=spec)
    quantizer = xnnpack.XNNPACKQuantizer().set_global(config)
    # A batch axis of any size while PyTorch calibrates and computes its reference output
    # (one call, not one per sample); the program TVM imports has the example's batch size.
    batch = {0: torch.export.Dim("batch")}
    graph = torch.export.export(
        model, (torch.from_numpy(x_calib[:2]),), dynamic_shapes=(batch,)
    ).module()
    prepared = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        prepared(torch.from_numpy(x_calib))
    converted = pt2e.convert_pt2e(prepared)
    return converted, torch.export.export(converted, example)


def output_scale(ep) -> float:
    """Scale of the dequantize that writes the program's output."""
    (out,) = [n for n in ep.graph.nodes if n.op == "output"]
    return float(out.args[0][0].args[1])


def assert_within_one_step(ours, theirs, scale):
    steps = np.abs(np.round(ours / scale) - np.round(theirs / scale))
    assert np.mean(steps <= 1) >= 0.99, np.mean(steps <= 1)
    return steps


@pytest.mark.integration
def test_pt2e_bundled_model_matches_pytorchs_quantized_output(mnist, tmp_path):
    example = (torch.zeros(1, 1, 28, 28),)
    converted, ep = pt2e_quantize(Input(mnist), CALIB[:64], example)
    assert is_quantized_program(ep)
    path = tmp_path / "mnist_pt2e.pt2"
    torch.export.save(ep, path)
    assert is_prequantized_file(path)
    integer, info = import_prequantized(path)  # what `tvm-intq compile mnist_pt2e.pt2` does
    assert float_ops(integer) == [] and info.inputs == {"input": (1, 1, 28, 28)}
    x = HELDOUT["input"][:300]
    with torch.no_grad():
        theirs = converted(torch.from_numpy(x)).numpy()
    steps = assert_within_one_step(run(integer, x), theirs, output_scale(ep))
    print(
        f"bundled: same code {np.mean(steps == 0):.4f}, within one step "
        f"{np.mean(steps <= 1):.4f} of {steps.size}"
    )
    assert np.mean(steps == 0) >= 0.99  # measured: every element the same int8 code


@pytest.mark.integration
@pytest.mark.parametrize("activations", [torch.int8, torch.uint8], ids=["int8", "uint8"])
def test_pt2e_blocks_fold_integer_only_and_match_pytorch(blocks, activations):
    model, x = blocks
    example = (torch.from_numpy(x[:1]),)
    converted, ep = pt2e_quantize(model, x[:32], example, activations)
    integer, _ = import_quantized_program(ep)
    assert float_ops(integer) == []
    got = run(integer, x[32:], "x")
    np.testing.assert_array_equal(got[:1], run_reference(integer, {"x": x[32:33]}))
    with torch.no_grad():
        theirs = converted(torch.from_numpy(x[32:])).numpy()
    steps = assert_within_one_step(got, theirs, output_scale(ep))
    print(
        f"{activations}: same code {np.mean(steps == 0):.4f}, within one step "
        f"{np.mean(steps <= 1):.4f} of {steps.size}"
    )


def test_a_float_program_is_not_taken_for_a_quantized_one(mnist):
    ep = torch.export.export(Input(mnist).eval(), (torch.zeros(1, 1, 28, 28),))
    assert not is_quantized_program(ep)
    with pytest.raises(IntqError, match="not a pt2e-quantized program"):
        import_quantized_program(ep)
    mod, info = import_exported(ep, "mnist")
    assert [p.name for p in mod["main"].params] == ["input"] and len(info.outputs) == 1


def test_dynamic_shapes_are_named_and_the_callers_module_keeps_its_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    mod, info = from_torch(model, torch.zeros(1, 3, 8, 8))
    assert model.training and info.inputs == {"input": (1, 3, 8, 8)}
    ep = torch.export.export(
        model.eval(), (torch.zeros(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    with pytest.raises(IntqError, match="dynamic dimensions"):
        import_exported(ep, "dyn")
