"""Model import: a model file -> a float (or already quantized) Relax module and its
:class:`ModelInfo`. One module per format (ONNX, TFLite); pre-quantized models (QDQ, QOperator,
fully-integer TFLite) keep their own scales (:mod:`.prequantized`)."""

from __future__ import annotations

from pathlib import Path

from tvm_intq.frontends.model_info import ModelInfo, parse_input_shapes
from tvm_intq.frontends.onnx import import_onnx
from tvm_intq.frontends.tflite import import_tflite


def import_model(path, input_shapes: dict | None = None):
    """Read, check and import a float ONNX or ``.tflite`` model: ``(Relax IRModule, ModelInfo)``."""
    if Path(path).suffix == ".tflite":
        return import_tflite(path, input_shapes)
    return import_onnx(path, input_shapes)


__all__ = ["ModelInfo", "import_model", "parse_input_shapes"]
