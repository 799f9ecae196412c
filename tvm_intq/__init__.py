"""tvm-intq: int8 post-training quantization and deployment for Apache TVM.

Float ONNX (or Relax) model + a little unlabelled calibration data -> pure-integer TVM program
(hybrid asymmetric quantization: asymmetric per-tensor activations, symmetric per-channel
weights, one integer multiply/add/shift per output channel, lookup tables for nonlinearities).
"""

from . import calibration, relay_passes, schedules, targets
from . import relax_pipeline  # registers the "intq" pipeline of tvm.compile
from .api import QuantConfig, build, calibrate, compile_onnx, lower, prepare, quantize
from .errors import IntqError

__all__ = [
    "IntqError", "QuantConfig", "build", "calibrate", "calibration", "compile_onnx", "lower",
    "prepare", "quantize", "relay_passes", "schedules", "targets",
]
