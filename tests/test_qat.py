"""Quantization-aware fine-tuning (the ``qat`` extra).

* The QAT forward pass *is* the integer program: on the same parameters its output equals
  the numpy reference of the integer program ``FoldToInteger`` builds, bit for bit, for each
  scheme on the bundled model and on tiny models with the layers it lacks (every int8
  tensor agrees, or the dequantized output could not).
* alpha-QAT's blend and incremental quantization's masks do what their formulas say, on
  small cases computed by hand.
* A short fine-tune lowers the loss, and the exported QDQ model, imported as ``tvm-intq
  compile`` imports it (no calibration), is the same integer program as the fine-tuned
  model's forward pass; so is the module handed to the compiler directly
  (``qat.integer_program``, no file), with the same integer constants as the QDQ route.

Stated tolerance: zero wherever the program is integer (every layer of the bundled model).
An op the program leaves in float (role ``float``, e.g. a transposed conv) is computed by
torch in float32 and by TVM in float32, so its quantized output may differ by one step
(checked against the compiled program on a tiny model).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

torch = pytest.importorskip("torch")

from tvm_intq import api, qat  # noqa: E402
from tvm_intq.bundled_model import bundled_model  # noqa: E402
from tvm_intq.calibration import SampleSet, load_npz  # noqa: E402
from tvm_intq.core.schemes import PowerOfTwo  # noqa: E402
from tvm_intq.demo import bundled  # noqa: E402
from tvm_intq.errors import IntqError  # noqa: E402
from tvm_intq.evaluation.reference import run_reference  # noqa: E402
from tvm_intq.frontends.prequantized import import_prequantized  # noqa: E402
from tvm_intq.frontends.torch import export as torch_export  # noqa: E402
from tvm_intq.relay_passes.analysis.ir_utils import const_value  # noqa: E402
from tvm_intq.relay_passes.analysis.rebuild import bindings_of  # noqa: E402

pytestmark = pytest.mark.integration  # whole models, boards or processes

SHAPE = {"input": (1, 1, 28, 28)}
# pow2 with S3's 8-bit bias data: the setting where post-training quantization loses most.
SCHEMES = {
    "hybrid-asym": "hybrid-asym",
    "symmetric": "symmetric",
    "pow2-bias8": PowerOfTwo(bias_bits=8),
}


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    calib = load_npz(bundled("calib.npz"), SHAPE)
    held = load_npz(bundled("heldout.npz"), SHAPE)
    return calib, held.arrays["input"], held.extras["labels"]


@pytest.fixture(scope="module")
def models(data):
    calib = data[0]
    return {
        name: qat.prepare_qat(bundled("mnist_cnn.onnx"), calib, scheme=s)
        for name, s in SCHEMES.items()
    }


def reference(integer, x, input_name="input"):
    return np.concatenate(
        [run_reference(integer, {input_name: x[i : i + 1]}) for i in range(len(x))]
    )


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_forward_is_the_integer_program(models, data, scheme):
    model = models[scheme]
    _, integer = api.lower(model.prepared, model.ranges, api.QuantConfig(scheme=SCHEMES[scheme]))
    x = data[1][:6]
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(ours, reference(integer, x))


def tiny_model(kind: str) -> onnx.ModelProto:
    """Layers the bundled model lacks: ``attention`` (matmuls of two activations, softmax,
    transpose, residual add, Gemm), ``pools`` (average pool with padding not counted,
    subtract and multiply of two activations, concat, LeakyRelu) and ``upsample`` (nearest
    resize, and a transposed conv, which the integer program leaves in float)."""
    rng = np.random.default_rng(0)
    h = onnx.helper

    def init(name, *shape):
        return onnx.numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    if kind == "attention":
        shape = [1, 8, 16]
        inits = [init(n, 16, 16) for n in ("wq", "wk", "wv")] + [init("wo", 4, 128), init("bo", 4)]
        nodes = [
            h.make_node("MatMul", ["x", w], [o]) for w, o in (("wq", "q"), ("wk", "k"), ("wv", "v"))
        ]
        nodes += [
            h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
            h.make_node("MatMul", ["q", "kt"], ["s"]),
            h.make_node("Softmax", ["s"], ["a"], axis=-1),
            h.make_node("MatMul", ["a", "v"], ["o"]),
            h.make_node("Add", ["o", "x"], ["r"]),
            h.make_node("Flatten", ["r"], ["f"]),
            h.make_node("Gemm", ["f", "wo", "bo"], ["y"], transB=1),
        ]
    elif kind == "upsample":
        shape = [1, 3, 8, 8]
        inits = [
            init("w1", 4, 3, 3, 3),
            init("wt", 4, 2, 2, 2),
            onnx.numpy_helper.from_array(np.float32([1, 1, 2, 2]), "scales"),
        ]
        nodes = [
            h.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
            h.make_node("Relu", ["c"], ["r"]),
            h.make_node("Resize", ["r", "", "scales"], ["u"], mode="nearest"),
            h.make_node("ConvTranspose", ["u", "wt"], ["y"], strides=[2, 2]),
        ]
    elif kind == "affine":  # PP-OCR rec's blocks: conv, scalar affine, hardswish; HardSigmoid
        shape = [1, 3, 8, 8]
        inits = [
            init("w1", 4, 3, 3, 3),
            init("b1", 4),
            init("w2", 4, 3, 1, 1),
            init("b2", 4),
            onnx.numpy_helper.from_array(np.float32(1.7), "s"),
            onnx.numpy_helper.from_array(
                np.float32([0.1, -0.2, 0.3, 0.0]).reshape(1, 4, 1, 1), "t"
            ),
            onnx.numpy_helper.from_array(np.float32(3), "three"),
            onnx.numpy_helper.from_array(np.float32(0), "zero"),
            onnx.numpy_helper.from_array(np.float32(6), "six"),
        ]
        nodes = [
            h.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
            h.make_node("Mul", ["s", "c"], ["cs"]),
            h.make_node("Add", ["cs", "t"], ["a"]),
            h.make_node("Add", ["a", "three"], ["a3"]),
            h.make_node("Clip", ["a3", "zero", "six"], ["g"]),
            h.make_node("Mul", ["a", "g"], ["ag"]),
            h.make_node("Div", ["ag", "six"], ["hs"]),
            h.make_node("Conv", ["x", "w2", "b2"], ["c2"]),
            h.make_node("HardSigmoid", ["c2"], ["gate"], alpha=1 / 6, beta=0.5),
            h.make_node("Mul", ["hs", "gate"], ["y"]),
        ]
    else:
        shape = [1, 3, 8, 8]
        inits = [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 3, 1, 1)]
        nodes = [
            h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            h.make_node("Conv", ["x", "w2"], ["c2"]),
            h.make_node(
                "AveragePool",
                ["c1"],
                ["p"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                count_include_pad=0,
            ),
            h.make_node("Sub", ["p", "c2"], ["d"]),
            h.make_node("Mul", ["d", "c2"], ["m"]),
            h.make_node("LeakyRelu", ["m"], ["l"], alpha=0.2),
            h.make_node("Concat", ["l", "c1"], ["y"], axis=1),
        ]
    y = h.make_tensor_value_info(
        "y",
        onnx.TensorProto.FLOAT,
        {
            "attention": [1, 4],
            "pools": [1, 12, 8, 8],
            "upsample": [1, 2, 32, 32],
            "affine": [1, 4, 8, 8],
        }[kind],
    )
    graph = h.make_graph(
        nodes, kind, [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)], [y], inits
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def tiny_outputs(kind, tmp_path, compiled=False):
    """``(QAT forward, integer program)`` on 4 random inputs; the program run
    by the numpy reference, or ``compiled`` by TVM for the host."""
    path = tmp_path / f"{kind}.onnx"
    onnx.save(tiny_model(kind), path)
    shape = [d.dim_value for d in tiny_model(kind).graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).normal(0, 1, [36] + shape[1:]).astype(np.float32)
    model = qat.prepare_qat(path, SampleSet({"x": x[:32]}), scheme="hybrid-asym")
    _, integer = api.lower(model.prepared, model.ranges)
    with torch.no_grad():
        ours = model(torch.from_numpy(x[32:])).numpy()
    if compiled:
        vm = relax.VirtualMachine(api.build(integer), tvm.cpu())
        theirs = np.concatenate(
            [vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(32, 36)]
        )
    else:
        theirs = np.concatenate(
            [run_reference(integer, {"x": x[i : i + 1]}) for i in range(32, 36)]
        )
    return ours, theirs


@pytest.mark.parametrize("kind", ["attention", "pools"])
def test_forward_is_the_integer_program_on_other_layers(kind, tmp_path):
    ours, theirs = tiny_outputs(kind, tmp_path)
    np.testing.assert_array_equal(ours, theirs)


def test_a_product_of_two_activations_is_the_programs_int32_requantize(tmp_path, monkeypatch):
    """FoldToInteger multiplies two activations with one int32 requantize, not a 256x256
    table; the forward pass must too (a table and the requantize differ by one step on a few
    code pairs, which 4 samples rarely show)."""
    from tvm_intq.qat import integer_layers

    def no_table(*_):
        raise AssertionError("a product of two activations went through a lookup table")

    monkeypatch.setattr(integer_layers, "lookup2", no_table)
    ours, theirs = tiny_outputs("pools", tmp_path)  # (AvgPool(c1) - c2) * c2
    np.testing.assert_array_equal(ours, theirs)


def test_transposed_conv_and_upsampling_equal_the_compiled_program(tmp_path):
    """conv2d_transpose is an integer layer of the program (zero point subtracted before the
    product): the forward pass computes it the same way, so the outputs are equal."""
    ours, theirs = tiny_outputs("upsample", tmp_path, compiled=True)
    np.testing.assert_array_equal(ours, theirs)


def test_alpha_blend_step_by_hand():
    s = qat.AlphaBlend(start=0.5, end=1.0)
    s.update(0.5, {})
    assert s.alpha == 0.75 and not s.integer
    w = torch.tensor([0.3, -1.0], requires_grad=True)
    wq = torch.tensor([0.25, -1.0])
    blended = s.weight("w", w, wq)  # 0.75 * Q(W) + 0.25 * W
    np.testing.assert_allclose(blended.detach().numpy(), [0.75 * 0.25 + 0.25 * 0.3, -1.0])
    (blended * torch.tensor([1.0, 2.0])).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), [0.25, 0.5])  # (1 - alpha) * dL/dW_alpha, no STE
    torch.optim.SGD([w], lr=0.1).step()  # one update: W - lr (1 - alpha) dL/dW_alpha
    np.testing.assert_allclose(w.detach().numpy(), [0.3 - 0.025, -1.0 - 0.05], rtol=1e-6)
    s.update(1.0, {})
    assert s.alpha == 1.0 and s.integer


def test_incremental_masks_by_hand():
    s = qat.Incremental(fractions=(0.25, 0.5, 1.0))
    w = torch.tensor([[0.1, -0.5, 0.3, 0.9]], requires_grad=True)
    s.update(0.0, {"w": w})
    np.testing.assert_array_equal(s.masks["w"].numpy(), [[0, 0, 0, 1]])  # largest |w| first
    with torch.no_grad():
        w[0, 3] = 0.0  # once quantized, stays quantized even when it shrinks
    s.update(0.4, {"w": w})
    np.testing.assert_array_equal(s.masks["w"].numpy(), [[0, 1, 0, 1]])
    wq = torch.tensor([[0.125, -0.5, 0.25, 0.0]])
    composite = s.weight("w", w, wq)  # M * Q(W) + (1 - M) * W
    np.testing.assert_allclose(composite.detach().numpy(), [[0.1, -0.5, 0.3, 0.0]])
    (composite * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [[1, 2, 3, 4]])  # quantized ones keep learning
    torch.optim.SGD([w], lr=0.1).step()
    np.testing.assert_allclose(w.detach().numpy(), [[0.0, -0.7, 0.0, -0.4]], atol=1e-6)
    assert not s.integer
    s.update(0.9, {"w": w})
    assert s.integer and s.masks["w"].numpy().all()


def test_ste_forward_is_quantized_gradient_is_identity():
    w = torch.tensor([0.3, -1.0], requires_grad=True)
    out = qat.Ste().weight("w", w, torch.tensor([0.25, -1.0]))
    np.testing.assert_array_equal(out.detach().numpy(), np.float32([0.25, -1.0]))
    (out * torch.tensor([3.0, 4.0])).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [3.0, 4.0])


def test_constant_affine_folds_in_onnx_as_in_relax(tmp_path):
    """The ONNX side folds what FoldBatchNorm folds (the scale and shift into the conv, not
    hardswish's ``+ 3``, whose input has another reader; HardSigmoid's affine, leaving its
    clip): the export then finds each of our convs in the ONNX model, and the compiled export
    is the fine-tuned program."""
    model = tiny_model("affine")
    folded = qat.fold_batch_norm(model)
    assert [n.op_type for n in folded.graph.node] == [
        "Conv",
        "Add",
        "Clip",
        "Mul",
        "Div",
        "Conv",
        "Clip",
        "Mul",
    ]
    x = np.random.default_rng(1).normal(0, 1, (36, 3, 8, 8)).astype(np.float32)
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (model, folded)
    ]
    a, b = (np.concatenate([r.run(None, {"x": x[i : i + 1]})[0] for i in range(4)]) for r in run)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    path = tmp_path / "affine.onnx"
    onnx.save(model, path)
    tuned = qat.prepare_qat(path, SampleSet({"x": x[:32]}), scheme="hybrid-asym")
    with torch.no_grad():
        for p in tuned.parameters():  # as training would change them
            p.mul_(1.05)
    exported_program_equals_forward(tuned, x[32:], tmp_path / "affine.qdq.onnx", "x")


def test_batch_norm_folds_in_onnx(data):
    model = onnx.load(str(bundled("mnist_cnn.onnx")))
    folded = qat.fold_batch_norm(model)
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    x = data[1][:4]
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (model, folded)
    ]
    a, b = (
        np.concatenate([r.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
        for r in run
    )
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture(scope="module")
def tuned(models, data):
    """The pow2 model (8-bit biases) fine-tuned for 12 steps with STE."""
    model, (_, x, y) = models["pow2-bias8"], data
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        before = float(loss(model(torch.from_numpy(x[500:])), torch.from_numpy(y[500:])))
    losses = qat.fine_tune(model, x[:384], y[:384], epochs=2, lr=3e-4)
    with torch.no_grad():
        after = float(loss(model(torch.from_numpy(x[500:])), torch.from_numpy(y[500:])))
    return model, before, after, losses


def test_short_fine_tune_lowers_the_loss(tuned):
    _, before, after, losses = tuned
    assert len(losses) == 12
    assert after < 0.8 * before, (before, after)


def integer_constants(mod):
    """Every constant the integer program computes with (int8 weights, int32 biases,
    multipliers, shifts, lookup tables, scales), as sorted ``(dtype, shape, bytes)``."""
    out = []
    for b in bindings_of(mod["main"]):
        for a in getattr(b.value, "args", []):
            c = const_value(a)
            if c is not None:
                out.append((str(c.dtype), c.shape, np.ascontiguousarray(c).tobytes()))
    return sorted(out)


def exported_program_equals_forward(model, x, path, input_name="input"):
    """The QDQ route (export, then import as ``tvm-intq compile`` does) and the direct one
    (:func:`qat.integer_program`, no file) give the same integers, and compute the forward
    pass's output, bit for bit."""
    qat.export(model, path)
    integer, _ = import_prequantized(path)  # what `tvm-intq compile` compiles, no calibration
    direct = qat.integer_program(model)
    assert integer_constants(direct) == integer_constants(integer)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(reference(integer, x, input_name), ours)
    np.testing.assert_array_equal(reference(direct, x, input_name), ours)
    return direct


def test_exported_model_compiles_to_the_fine_tuned_program(tuned, data, tmp_path):
    direct = exported_program_equals_forward(tuned[0], data[1][:6], tmp_path / "tuned.qdq.onnx")
    # ... and the direct module builds and runs as it is: the compiled program's output too.
    x = data[1][:6]
    vm = relax.VirtualMachine(api.build(direct), tvm.cpu())
    compiled = np.concatenate(
        [vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(len(x))]
    )
    np.testing.assert_array_equal(compiled, reference(direct, x))


def test_a_model_without_onnx_file_goes_to_the_compiler_directly(data, tmp_path):
    """A torch.export program (.pt2) fine-tunes like an ONNX model; with no ONNX file to
    write back into, export says so and integer_program is the way on."""
    path = tmp_path / "mnist.pt2"
    torch.export.save(torch_export(bundled_model(), torch.zeros(1, 1, 28, 28)), path)
    calib = SampleSet({"x": data[0].arrays["input"][:32]})
    model = qat.prepare_qat(path, calib, scheme="symmetric")
    with pytest.raises(IntqError, match="integer_program"):
        qat.export(model, tmp_path / "mnist.qdq.onnx")
    x = data[1][:4]
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(reference(qat.integer_program(model), x, "x"), ours)


def test_export_with_zero_points(models, data, tmp_path):
    """hybrid-asym (asymmetric activations) with changed weights and biases (as training
    would change them), restored afterwards for the other tests."""
    model = models["hybrid-asym"]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.05 * torch.randn(p.shape, generator=gen))
        exported_program_equals_forward(model, data[1][:6], tmp_path / "hybrid.qdq.onnx")
    finally:
        model.load_state_dict(saved)


def test_prepare_with_given_ranges_does_not_calibrate(models, data, monkeypatch):
    """Several strategies start from one calibration: ``ranges=`` is taken as it is."""
    first = models["hybrid-asym"]

    def no_calibration(*args, **kwargs):
        raise AssertionError("prepare calibrated although ranges were given")

    monkeypatch.setattr(api, "calibrate", no_calibration)
    again = qat.prepare_qat(
        bundled("mnist_cnn.onnx"), data[0], SCHEMES["hybrid-asym"], ranges=first.ranges
    )
    assert again.ranges == first.ranges
    x = torch.from_numpy(data[1][:4])
    with torch.no_grad():
        np.testing.assert_array_equal(again(x).numpy(), first(x).numpy())
