"""Model import: a model file -> a float (or already quantized) Relax module and its
:class:`ModelInfo`. One module per format (ONNX, TFLite, ``torch.export`` programs); pre-quantized
models (QDQ, QOperator, fully-integer TFLite, pt2e) keep their own scales (:mod:`.prequantized`)."""

from __future__ import annotations

from pathlib import Path

from tvm_intq.errors import IntqError
from tvm_intq.frontends.model_info import ModelInfo, first_line, parse_input_shapes
from tvm_intq.frontends.onnx import import_onnx
from tvm_intq.frontends.tflite import import_tflite


def torch_frontend():
    """:mod:`tvm_intq.frontends.torch`, or an :class:`IntqError` saying how to get PyTorch: it
    is an optional extra, so the rest of the package loads without it and this module is
    imported only when a PyTorch program is read."""
    try:
        from tvm_intq.frontends import torch as module
    except ImportError as err:
        raise IntqError(
            f"reading a PyTorch program needs PyTorch ({first_line(err)}): "
            "pip install 'tvm-intq[qat]'"
        ) from None
    return module


def import_model(path, input_shapes: dict | None = None):
    """Read, check and import a float ONNX, ``.tflite`` or ``.pt2`` (``torch.export.save``)
    model: ``(Relax IRModule, ModelInfo)``."""
    suffix = Path(path).suffix
    if suffix == ".pt2":
        return torch_frontend().import_pt2(path, input_shapes)
    if suffix == ".tflite":
        return import_tflite(path, input_shapes)
    return import_onnx(path, input_shapes)


__all__ = ["ModelInfo", "import_model", "parse_input_shapes", "torch_frontend"]
