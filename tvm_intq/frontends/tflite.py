"""TFLite model file -> Relax module in NCHW, through ``tvm.relax.frontend.tflite``.

TVM's TFLite frontend writes each quantized operator as ``dequantize -> float op -> quantize``
(a QDQ graph) in TFLite's NHWC layout. ``ConvertLayout`` turns the convolutions into NCHW/OIHW,
the layout of our integer kernels. The permutes it puts on int8 weights fold into the constants
(:class:`~tvm_intq.relay_passes.CanonicalizeQDQ`); those after a conv move below its bias and
quantize (:class:`~tvm_intq.relay_passes.sink_permutes.SinkPermutes`). A fully-integer model is
then folded like a pre-quantized ONNX model
(:func:`tvm_intq.frontends.prequantized.import_prequantized`); a float model goes through our own
calibration like an ONNX one. Needs the ``tflite`` package
(``pip install tvm-intq[tflite]``).
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from tvm_intq.errors import IntqError
from tvm_intq.frontends.model_info import ModelInfo, first_line
from tvm_intq.relay_passes.sink_permutes import SinkPermutes

_TYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 9: "int8"}  # tflite.TensorType


def load_tflite(path):
    """The ``tflite.Model`` of a .tflite file, or an :class:`IntqError` naming the file."""
    try:
        import tflite
    except ImportError:
        raise IntqError(
            f"{path}: reading TFLite models needs the 'tflite' package "
            "(pip install tvm-intq[tflite])"
        ) from None
    path = Path(path)
    if not path.is_file():
        raise IntqError(f"{path}: no such model file")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise IntqError(f"{path}: not a TFLite model (no TFL3 identifier)")
    return tflite.Model.GetRootAsModel(buf, 0)


def _tensors(model, indices):
    g = model.Subgraphs(0)
    return [g.Tensors(int(i)) for i in indices]


def is_quantized(model) -> bool:
    """Does the first subgraph hold int8/uint8 tensors with quantization parameters?"""
    g = model.Subgraphs(0)
    for i in range(g.TensorsLength()):
        t = g.Tensors(i)
        q = t.Quantization()
        if _TYPES.get(t.Type()) in ("int8", "uint8") and q is not None and q.ScaleLength() > 0:
            return True
    return False


def model_info(model, path, input_shapes: dict | None = None) -> ModelInfo:
    g = model.Subgraphs(0)
    inputs = _tensors(model, g.InputsAsNumpy())
    shapes, dtypes = {}, {}
    for t in inputs:
        name = t.Name().decode()
        shape = tuple((input_shapes or {}).get(name, tuple(int(d) for d in t.ShapeAsNumpy())))
        if any(d <= 0 for d in shape):
            raise IntqError(
                f"{path}: input '{name}' has dynamic shape {list(shape)}; fix it with "
                f"--input-shape {name}:" + "x".join(str(max(d, 1)) for d in shape)
            )
        shapes[name] = shape
        dtypes[name] = _TYPES.get(t.Type(), "float32")
    outputs = [t.Name().decode() for t in _tensors(model, g.OutputsAsNumpy())]
    return ModelInfo(path=str(path), inputs=shapes, input_dtypes=dtypes, outputs=outputs)


def import_tflite(path, input_shapes: dict | None = None):
    """Read and import a .tflite model: ``(Relax IRModule with NCHW convolutions, ModelInfo)``."""
    from tvm.relax.frontend.tflite import from_tflite

    model = load_tflite(path)
    info = model_info(model, path, input_shapes)
    try:
        mod = from_tflite(model, {k: tuple(v) for k, v in info.inputs.items()}, info.input_dtypes)
    except Exception as err:  # the frontend raises many kinds; the message is what matters
        raise IntqError(
            f"{path}: TVM's TFLite frontend cannot import this model: {first_line(err)}"
        ) from None
    mod = tvm.transform.Sequential(
        [
            relax.transform.ConvertLayout({"relax.nn.conv2d": ["NCHW", "OIHW"]}),
            relax.transform.CanonicalizeBindings(),
            SinkPermutes(),
        ]
    )(mod)
    main = mod["main"]
    if main.attrs is not None and "params" in main.attrs:  # the frontend's copy of the weights
        mod["main"] = main.without_attr("params")
    return mod, info
