"""ONNX model file -> float Relax module with static input shapes.

Everything that can be wrong with the user's model file is found here and reported as one
line naming the file, the input or the operator, before TVM sees it.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import TensorProto

from tvm_intq.errors import IntqError
from tvm_intq.frontends.model_info import ModelInfo, first_line, fmt_dims
from tvm_intq.frontends.onnx_clean import clean, repair_types, upgrade_opset
from tvm_intq.frontends.quiet import quiet_tvm


def load_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise IntqError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError, truncated files other errors
        raise IntqError(f"{path}: not a readable ONNX model ({first_line(err)})") from None
    if not model.graph.node:
        raise IntqError(f"{path}: not a readable ONNX model (the graph has no nodes)")
    repair_types(model)  # a shape-less output type stops the checker, not the runtimes
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise IntqError(f"{path}: malformed ONNX model ({first_line(err)})") from None
    return model


def model_info(model: onnx.ModelProto, path: str, input_shapes: dict | None = None) -> ModelInfo:
    """Static shapes of the model's inputs, with dynamic dims fixed by ``input_shapes``."""
    input_shapes = dict(input_shapes or {})
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    unknown = set(input_shapes) - {i.name for i in graph_inputs}
    if unknown:
        raise IntqError(
            f"{path}: --input-shape names {', '.join(sorted(unknown))}, but the model's "
            f"inputs are {', '.join(i.name for i in graph_inputs)}"
        )
    shapes, dtypes = {}, {}
    for inp in graph_inputs:
        ttype = inp.type.tensor_type
        dims = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in ttype.shape.dim
        ]
        given = input_shapes.get(inp.name)
        if given is not None:
            if len(given) != len(dims) or any(
                isinstance(d, int) and d != g for d, g in zip(dims, given)
            ):
                raise IntqError(
                    f"{path}: --input-shape {inp.name}:{'x'.join(map(str, given))} does not "
                    f"match the model's input shape {fmt_dims(dims)}"
                )
            dims = list(given)
        missing = [d for d in dims if not isinstance(d, int)]
        if missing:
            raise IntqError(
                f"{path}: input '{inp.name}' has dynamic shape {fmt_dims(dims)}; fix it with "
                f"--input-shape {inp.name}:"
                + "x".join(str(d) if isinstance(d, int) else "N" for d in dims)
            )
        shapes[inp.name] = tuple(dims)
        dtypes[inp.name] = (
            np.dtype(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
            if ttype.elem_type != TensorProto.UNDEFINED
            else "float32"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    return ModelInfo(
        path=str(path),
        inputs=shapes,
        input_dtypes=dtypes,
        outputs=[o.name for o in model.graph.output],
        metadata=meta,
    )


def import_onnx(path: str | Path, input_shapes: dict | None = None):
    """Read, check and import an ONNX model: ``(float Relax IRModule, ModelInfo)``."""
    return import_proto(load_onnx(path), path, input_shapes)


def import_proto(model: onnx.ModelProto, path: str | Path, input_shapes: dict | None = None):
    """Import a loaded ONNX model (``path`` names it in errors): ``(Relax IRModule, ModelInfo)``.

    The model is cleaned first (:mod:`.onnx_clean`: inputs fixed to their static shapes,
    shape arithmetic folded, Constant nodes and Identity chains gone); a model of opset < 13
    that TVM's frontend still rejects is tried again converted to opset 13."""
    info = model_info(model, str(path), input_shapes)
    check_constant_indices(model, str(path), info)
    cleaned = clean(model, info.inputs)
    try:
        return _from_onnx(cleaned, info), info
    except IntqError:
        upgraded = upgrade_opset(cleaned)
        if upgraded is None:
            raise
    try:
        return _from_onnx(upgraded, info), info
    except IntqError:
        return _from_onnx(cleaned, info), info  # raises again: the error at the model's opset


def _from_onnx(model: onnx.ModelProto, info: ModelInfo):
    from tvm.relax.frontend.onnx import from_onnx

    path = info.path
    error = None
    with quiet_tvm():
        try:
            mod = from_onnx(
                model,
                shape_dict={k: list(v) for k, v in info.inputs.items()},
                dtype_dict=info.input_dtypes,
            )
            # What TVM cannot lower (symbolic shapes left by the frontend) shows here, not
            # later inside the flow with a traceback.
            tvm.relax.transform.LegalizeOps()(mod)
        except tvm.error.OpNotImplemented as err:
            error = f"{path}: {first_line(err)}"
        except Exception as err:  # the frontend raises many kinds; the message is what matters
            error = f"{path}: TVM's ONNX frontend cannot import this model: {first_line(err)}"
        # A failed import leaves a BlockBuilder in a reference cycle; freed here, its
        # "destroyed with remaining blocks" warning stays inside the quiet block.
        gc.collect()
    if error is not None:
        raise IntqError(error)
    return mod


def check_constant_indices(model: onnx.ModelProto, path: str, info: ModelInfo) -> None:
    """Constant ``Gather`` indices must lie within the axis they index: ONNX Runtime refuses
    an index out of range, a TVM build reads past the tensor (zeros, or whatever lies
    there). Negative indices count from the end, as ONNX defines."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    gathers = [
        n
        for n in model.graph.node
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in consts
    ]
    if not gathers:
        return
    shapes = {k: list(v) for k, v in info.inputs.items()}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        for v in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = v.type.tensor_type.shape.dim
            if dims and all(d.HasField("dim_value") for d in dims):
                shapes.setdefault(v.name, [d.dim_value for d in dims])
    except Exception:  # noqa: BLE001 - shape inference is a help here, not a requirement
        pass
    for node in gathers:
        data = shapes.get(node.input[0])
        if data is None:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if not -len(data) <= axis < len(data):
            continue
        size = data[axis]
        idx = numpy_helper.to_array(consts[node.input[1]]).astype(np.int64).reshape(-1)
        bad = idx[(idx < -size) | (idx >= size)]
        if bad.size:
            raise IntqError(
                f"{path}: Gather node '{node.name or node.output[0]}': index {int(bad[0])} is "
                f"out of range for axis {axis} of size {size} of '{node.input[0]}'"
            )
