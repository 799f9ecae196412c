"""The bundled model quantized by ONNX Runtime's ``quantize_static`` (test helper).

ONNX Runtime's recommended flow: ``quant_pre_process`` (shape inference, Conv+BatchNorm
fusion), then ``quantize_static`` per channel on the bundled calibration set, in the QDQ or
the QOperator format, with int8 or uint8 activations (weights int8).

Weights use 7 bits (``reduce_range``, ONNX Runtime's advice for CPUs without VNNI): on an
AVX2 CPU its u8 x s8 kernels add two products in int16 with saturation (``vpmaddubsw``), so
with 8-bit weights its own outputs are not the exact integers of the model it wrote (up to
44 steps off on the bundled model); 7-bit weights keep every sum in range, on any CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvm_intq.demo import bundled

CALIB_SAMPLES = 64  # of calib.npz; enough for min/max ranges, keeps the tests quick


def ort_quantize(folder: Path, fmt: str = "QDQ", activations: str = "QInt8") -> Path:
    """Path of the bundled model quantized by ONNX Runtime (``fmt`` QDQ|QOperator,
    ``activations`` QInt8|QUInt8), written into ``folder``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = folder / "mnist_cnn.pre.onnx"
    if not pre.exists():
        quant_pre_process(str(bundled("mnist_cnn.onnx")), str(pre))
    x = np.load(bundled("calib.npz"))["input"][:CALIB_SAMPLES]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter(x[i : i + 1] for i in range(len(x)))

        def get_next(self):
            sample = next(self.samples, None)
            return None if sample is None else {"input": sample}

    out = folder / f"mnist_cnn.{fmt}.{activations}.onnx"
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=getattr(QuantFormat, fmt),
        per_channel=True,
        activation_type=getattr(QuantType, activations),
        weight_type=QuantType.QInt8,
        reduce_range=True,
    )
    return out
