"""PyTorch models -> float Relax module, without ONNX: ``torch.export`` and TVM's own frontend.

``from_torch(module, example_inputs)`` exports the module with ``torch.export.export`` and
imports the program with ``tvm.relax.frontend.torch.from_exported_program``; a ``.pt2`` file
(``torch.export.save``) is read with ``torch.export.load``. The result is the pair the ONNX
frontend returns, ``(Relax IRModule, ModelInfo)``, and the rest of the flow (``prepare``,
calibration, schemes, reports, targets) takes it unchanged: after
:func:`~tvm_intq.relay_passes.CanonicalizeForQuantization` the bundled model's module is the
one its ONNX file gives, tensor for tensor and name for name.

A model quantized with PyTorch's own pt2e flow (torchao's ``prepare_pt2e`` / ``convert_pt2e``)
holds ``quantized_decomposed`` quantize/dequantize calls, which TVM's frontend does not
convert; :func:`converters` maps them to ``relax.quantize`` / ``relax.dequantize`` (the same
rounding and clamping, see :func:`_quantize`; uint8 shifted to int8, exactly), and
:func:`import_quantized_program` folds the module into integer arithmetic with the model's own
scales, as :func:`tvm_intq.frontends.prequantized.import_prequantized` does for a QDQ ONNX model.

Only this module, :mod:`tvm_intq.bundled_model` and :mod:`tvm_intq.qat` import torch (the
optional ``qat`` extra); :func:`tvm_intq.frontends.torch_frontend` loads this one on demand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import tvm
from tvm import relax

from tvm_intq.errors import IntqError
from tvm_intq.frontends.model_info import ModelInfo, first_line
from tvm_intq.relay_passes import CanonicalizeQDQ, FoldToInteger
from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.rebuild import bindings_of

# quantized_decomposed ops pt2e's convert step writes (torchao and torch.ao alike).
QUANTIZE_OPS = (
    "quantize_per_tensor.default",
    "quantize_per_tensor.tensor",
    "quantize_per_channel.default",
)
DEQUANTIZE_OPS = (
    "dequantize_per_tensor.default",
    "dequantize_per_tensor.tensor",
    "dequantize_per_channel.default",
)


def _arg(node, i, name, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _qparam(tensors: dict, value, dtype: str) -> relax.Expr:
    """A scale (``dtype`` float32) or zero point (the quantized dtype) as a constant: a Python
    number, or a tensor the program holds (per-channel parameters are buffers, float32 and
    int64; ``tensors`` maps placeholder names to them), so that the quantize/dequantize call
    has constant parameters from the start (CanonicalizeQDQ and FoldToInteger read them)."""
    if hasattr(value, "op"):  # an fx node
        tensor = tensors.get(value.name)
        if tensor is None:
            raise IntqError(
                f"pt2e node '{value.name}': quantization parameters must be constants "
                "of the program (per-tensor numbers or per-channel buffers)"
            )
        value = tensor.detach().cpu().numpy()
    value = np.asarray(value)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        if value.min() < info.min or value.max() > info.max:
            raise IntqError(f"zero point {value} does not fit {dtype}")
    return relax.const(value.astype(dtype))


def _program_tensors(ep) -> dict:
    """Placeholder name -> the tensor it holds (parameters, buffers, constants):
    from_exported_program binds them only after conversion, and the converters see nodes."""
    sig = ep.graph_signature
    held = {**ep.state_dict, **ep.constants}
    names = {
        **sig.inputs_to_parameters,
        **sig.inputs_to_buffers,
        **sig.inputs_to_lifted_tensor_constants,
    }
    return {node: held[target] for node, target in names.items() if target in held}


def _check_range(node, qmin, qmax, dtype: str):
    info = np.iinfo(dtype)
    if (int(qmin), int(qmax)) not in ((info.min, info.max), (info.min + 1, info.max)):
        raise IntqError(
            f"pt2e node '{node.name}': quantization range [{qmin}, {qmax}] of {dtype} "
            f"is not the full range; only [{info.min}, {info.max}] (or "
            f"[{info.min + 1}, {info.max}] for weights) has an exact integer form here"
        )


def _qargs(node):
    """``(axis, qmin, qmax, dtype)`` of a quantized_decomposed call (axis -1: per tensor)."""
    per_channel = "per_channel" in str(node.target)
    qmin, qmax, dtype = (
        _arg(node, 3 + per_channel + k, n)
        for k, n in enumerate(("quant_min", "quant_max", "dtype"))
    )
    dtype = _dtype_name(dtype)
    _check_range(node, qmin, qmax, dtype)
    return (int(node.args[3]) if per_channel else -1), int(qmin), int(qmax), dtype


def _int8_zero_point(tensors, value, dtype: str) -> relax.Expr:
    """The zero point as int8: a uint8 one shifted by -128 (see :func:`_quantize`)."""
    zp = _qparam(tensors, value, "int32" if dtype == "uint8" else dtype)
    if dtype != "uint8":
        return zp
    return relax.const((const_value(zp).astype(np.int64) - 128).astype(np.int8))


def _quantize(node, importer, tensors):
    """``quantize_per_tensor(x, s, zp, qmin, qmax, dtype)`` -> ``relax.quantize``.

    torch computes ``clamp(round(x * (1 / s)) + zp, qmin, qmax)``, TVM ``clip(round(x / s) +
    zp)``; both round half to even, so they agree but where ``x / s`` lies within a float32
    rounding error of a .5 tie (only the program's input quantize stays such a call: every
    other folds into integer arithmetic). A uint8 tensor becomes int8, ``q' = q - 128``,
    ``zp' = zp - 128``: ``clip(round(x/s) + zp, 0, 255) - 128 = clip(round(x/s) + zp', -128,
    127)``, and its dequantize ``s (q - zp) = s (q' - zp')``; pt2e's quantize feeds only
    dequantize calls, so the shift is exact, as for a uint8 QDQ ONNX model
    (:func:`tvm_intq.frontends.prequantized.shift_uint8`).
    """
    x = importer.env[node.args[0]]
    axis, qmin, _, dtype = _qargs(node)
    if dtype == "uint8" and any("dequantize" not in str(u.target) for u in node.users):
        raise IntqError(
            f"pt2e node '{node.name}': a uint8 tensor read by "
            f"{', '.join(u.name for u in node.users)}, not only by dequantize calls; "
            "it has no exact int8 form here"
        )
    if qmin != np.iinfo(dtype).min:
        raise IntqError(
            f"pt2e node '{node.name}': an activation quantized to [{qmin}, ...]; "
            "only the full int8/uint8 range has an exact integer form here"
        )
    return importer.block_builder.emit(
        relax.op.quantize(
            x,
            _qparam(tensors, node.args[1], "float32"),
            _int8_zero_point(tensors, node.args[2], dtype),
            axis=axis,
            out_dtype="int8",
        )
    )


def _dequantize(node, importer, tensors):
    """``dequantize_per_tensor|channel(q, s, zp, [axis,] qmin, qmax, dtype)`` ->
    ``relax.dequantize`` (``s * (q - zp)``, as torch computes it), int8 (see
    :func:`_quantize` for uint8)."""
    q = importer.env[node.args[0]]
    axis, _, _, dtype = _qargs(node)
    if str(q.ty.dtype) != "int8":  # a uint8 constant: no pt2e quantizer writes one
        raise IntqError(
            f"pt2e node '{node.name}': dequantizes a {q.ty.dtype} tensor that is not "
            "a quantize result; only int8 constants and quantized activations are "
            "supported"
        )
    out_dtype = _dtype_name(node.kwargs.get("out_dtype") or torch.float32)
    return importer.block_builder.emit(
        relax.op.dequantize(
            q,
            _qparam(tensors, node.args[1], "float32"),
            _int8_zero_point(tensors, node.args[2], dtype),
            axis=axis,
            out_dtype=out_dtype,
        )
    )


def _scalar(x, value) -> relax.Constant:
    return relax.const(np.array(value, str(x.ty.dtype)))


def _clamp(node, importer):
    """``hardtanh(x, lo, hi)`` / ``relu6(x)`` / ``clamp(x, lo, hi)`` -> ``minimum(maximum(x,
    lo), hi)``: the form an ONNX ``Clip`` takes after import and
    :class:`~tvm_intq.relay_passes.ClipKernelsToOps`, so a ReLU6 gets the same tensor names
    through both frontends. (TVM's own ``hardtanh`` converter also reads the bounds from
    keyword arguments only: ``hardtanh(x, 0.0, 6.0)`` became ``clip(x, -1, 1)``.)"""
    name = node.target.__name__.split(".")[0].rstrip("_")
    x = importer.env[node.args[0]]
    if name == "relu6":
        lo, hi = 0.0, 6.0
    elif name == "hardtanh":
        lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    else:
        lo, hi = _arg(node, 1, "min"), _arg(node, 2, "max")
    if any(b is not None and not isinstance(b, (int, float)) for b in (lo, hi)):
        raise IntqError(f"node '{node.name}': {name} bounds must be numbers, got {lo}, {hi}")
    bb = importer.block_builder
    if lo is not None:
        x = bb.emit(relax.op.maximum(x, _scalar(x, lo)))
    if hi is not None:
        x = bb.emit(relax.op.minimum(x, _scalar(x, hi)))
    return x


def _leaky_relu(node, importer):
    """``leaky_relu(x, a)`` with the slope ``a`` as PyTorch computes with it, rounded to the
    tensor's float type (a float32 kernel multiplies by ``float(a)``), which is also what an
    ONNX file stores: the lookup table is then the same as the ONNX model's."""
    x = importer.env[node.args[0]]
    alpha = _arg(node, 1, "negative_slope", 0.01)
    return importer.block_builder.emit(
        relax.op.nn.leakyrelu(x, float(np.array(alpha, str(x.ty.dtype))))
    )


# Ops torch.export's default decomposition would break up in a different order than the ONNX
# importer builds them (hardswish as x * clamp(x + 3) / 6 instead of x * (clip(x + 3) / 6),
# hardtanh as clamp): kept whole and converted here or by TVM's own converter.
KEEP_WHOLE = (
    "hardswish",
    "hardswish_",
    "hardtanh",
    "hardtanh_",
    "relu6",
    "relu6_",
    "leaky_relu",
    "leaky_relu_",
)


def converters(ep) -> dict:
    """``custom_convert_map`` for ``from_exported_program(ep)``: pt2e's quantize/dequantize
    ops and the activations whose import must match the ONNX frontend's."""
    tensors = _program_tensors(ep)

    def with_tensors(fn):
        return lambda node, importer: fn(node, importer, tensors)

    return {
        **{op: with_tensors(_quantize) for op in QUANTIZE_OPS},
        **{op: with_tensors(_dequantize) for op in DEQUANTIZE_OPS},
        **{f"{op}.default": _clamp for op in ("hardtanh", "hardtanh_", "relu6", "relu6_", "clamp")},
        **{f"{op}.default": _leaky_relu for op in ("leaky_relu", "leaky_relu_")},
    }


def decompose(ep):
    """``ep`` in core ATen operators (TVM's frontend converts those), but for :data:`KEEP_WHOLE`."""
    table = torch.export.default_decompositions()
    for name in KEEP_WHOLE:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            table.pop(packet.default, None)
    return ep.run_decompositions(table)


def is_quantized_program(ep) -> bool:
    """Does the exported program hold pt2e quantize/dequantize calls?"""
    return any(
        n.op == "call_function" and "quantized_decomposed" in str(n.target) for n in ep.graph.nodes
    )


def _register_qdq_ops():
    """Define the ``quantized_decomposed`` operators, which a saved pt2e program names: torch
    defines them on importing this module (torchao imports it too)."""
    try:
        import torch.ao.quantization.fx._decomposed  # noqa: F401
    except ImportError:  # a torch without it: torchao's pt2e defines them
        try:
            import torchao.quantization.pt2e  # noqa: F401
        except ImportError:
            pass


def load_pt2(path: str | Path):
    """A ``torch.export.save``-d program (``.pt2``), with the error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise IntqError(f"{path}: no such model file")
    _register_qdq_ops()
    try:
        return torch.export.load(str(path))
    except Exception as err:  # zip, pickle and version errors alike
        raise IntqError(
            f"{path}: not a readable torch.export program ({first_line(err)})"
        ) from None


def export(module: torch.nn.Module, example_inputs, dynamic_shapes=None):
    """``torch.export.export`` of ``module`` in eval mode (BatchNorm with its running
    statistics, dropout off): the inference program, what the compiler quantizes."""
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    training = module.training
    module.eval()
    try:
        return torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    except Exception as err:
        raise IntqError(
            f"torch.export cannot export {type(module).__name__}: {first_line(err)}"
        ) from None
    finally:
        module.train(training)  # the caller's module as it was


def import_exported(ep, path: str = "<torch module>", input_names=None):
    """An ``ExportedProgram`` -> ``(Relax IRModule, ModelInfo)``.

    Weights become constants (the ONNX frontend's form); a single output is returned as a
    tensor, not a 1-tuple; the inputs are named ``input_names`` (default: the names of the
    module's ``forward`` arguments), which are the names calibration data uses.
    """
    from tvm.relax.frontend.torch import from_exported_program

    if ep.graph_signature.user_inputs and not all(
        isinstance(n, str) for n in ep.graph_signature.user_inputs
    ):
        raise IntqError(f"{path}: only tensor inputs are supported")
    ep = decompose(ep)
    try:
        mod = from_exported_program(
            ep,
            unwrap_unit_return_tuple=True,
            custom_convert_map=converters(ep),
            run_ep_decomposition=False,
        )
    except IntqError as err:
        raise IntqError(f"{path}: {err}") from None
    except Exception as err:  # the frontend raises AssertionError/KeyError/... for unknown ops
        raise IntqError(
            f"{path}: TVM's PyTorch frontend cannot import this program: {first_line(err)}"
        ) from None
    names = list(input_names) if input_names else [p.name for p in mod["main"].params]
    if len(names) != len(mod["main"].params):
        raise IntqError(
            f"{path}: {len(names)} input names given for {len(mod['main'].params)} inputs"
        )
    mod = _rename_inputs(mod, names)
    params = mod["main"].params
    dynamic = [
        p.name for p in params if not all(isinstance(d, tvm.tirx.IntImm) for d in p.ty.shape)
    ]
    if dynamic:
        raise IntqError(
            f"{path}: input(s) {', '.join(dynamic)} have dynamic dimensions; export "
            "with static shapes (the compiled program has the example's shapes)"
        )
    info = ModelInfo(
        path=str(path),
        inputs={p.name: tuple(int(d) for d in p.ty.shape) for p in params},
        input_dtypes={p.name: str(p.ty.dtype) for p in params},
        outputs=[str(o) for o in ep.graph_signature.user_outputs],
        metadata={"frontend": "torch.export"},
    )
    return mod, info


def from_torch(module: torch.nn.Module, example_inputs, input_names=None):
    """A float PyTorch module -> ``(Relax IRModule, ModelInfo)``, as
    :func:`~tvm_intq.frontends.onnx.import_onnx` gives for its ONNX export. The module is
    exported in eval mode with the example inputs' shapes (the batch size of the compiled
    program is theirs)."""
    return import_exported(
        export(module, example_inputs), f"<{type(module).__name__}>", input_names
    )


def import_pt2(path, input_shapes: dict | None = None):
    """A ``.pt2`` file -> ``(Relax IRModule, ModelInfo)``. Its shapes are those it was
    exported with; ``input_shapes`` may only repeat them."""
    mod, info = import_exported(load_pt2(path), str(path))
    _check_shapes(info, input_shapes, path)
    return mod, info


def _check_shapes(info: ModelInfo, input_shapes: dict | None, path):
    for name, shape in (input_shapes or {}).items():
        if name not in info.inputs:
            raise IntqError(
                f"{path}: --input-shape names {name}, but the program's inputs are "
                f"{', '.join(info.inputs)}"
            )
        if tuple(shape) != info.inputs[name]:
            raise IntqError(
                f"{path}: input '{name}' was exported with shape "
                f"{'x'.join(map(str, info.inputs[name]))}; export it again with "
                f"{'x'.join(map(str, shape))}"
            )


def import_quantized_program(ep, path: str = "<torch module>", input_names=None):
    """A pt2e-quantized ``ExportedProgram`` -> ``(integer Relax IRModule, ModelInfo)`` with the
    model's own scales, zero points and int8 weights (no calibration). Raises
    :class:`IntqError` naming the quantize calls that could not be folded."""
    if not is_quantized_program(ep):
        raise IntqError(
            f"{path}: not a pt2e-quantized program (no quantized_decomposed "
            "quantize/dequantize call); quantize it with calibration data instead"
        )
    mod, info = import_exported(ep, path, input_names)
    qdq = CanonicalizeQDQ()(mod)
    integer = FoldToInteger()(qdq)
    params = set(integer["main"].params)
    left = [
        b.var.name
        for b in bindings_of(integer["main"])
        if op_name(b.value) == "relax.quantize" and b.value.args[0] not in params
    ]
    if left:
        raise IntqError(
            f"{path}: {len(left)} quantized layer(s) cannot be folded into integer "
            f"arithmetic: {', '.join(left)}"
        )
    return integer, info


def import_quantized_pt2(path, input_shapes: dict | None = None):
    """A pt2e-quantized ``.pt2`` file -> ``(integer Relax IRModule, ModelInfo)``."""
    integer, info = import_quantized_program(load_pt2(path), str(path))
    _check_shapes(info, input_shapes, path)
    return integer, info


def _rename_inputs(mod: tvm.IRModule, names: list) -> tvm.IRModule:
    func = mod["main"]
    new = [relax.Var(n, p.ty) for n, p in zip(names, func.params)]
    body = func.bind_params(dict(zip(func.params, new))).body
    renamed = relax.Function(new, body, func.ret_ty, func.is_pure, func.attrs)
    out = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
    out["main"] = renamed
    return out
