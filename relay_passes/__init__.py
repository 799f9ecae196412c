"""Relax graph passes of tvm-intq (the folder keeps the design card's name, ``relay_passes``:
Relay is gone from TVM 0.27 and these are Relax passes).

Each is an ordinary ``tvm.transform`` pass that drops into a ``tvm.transform.Sequential``::

    CanonicalizeForQuantization()  float module -> inference form with named tensors
    CanonicalizeQDQ()              imported QDQ module -> the same, int8 weights kept
    ExposeTensors(names)           main also returns the named tensors (calibration)
    Annotate(ranges, scheme)       quantize/dequantize pairs at the quantization points
    FoldToInteger()                QDQ graph -> integer arithmetic (requantize, LUTs, ...)
    CheckIntegerOnly()             error naming any float op left inside
    GateQuantization(candidates)   one fake-quantized model, each point's quantization an input
"""

from tvm_intq.relay_passes.analysis.quant_points import analyze
from tvm_intq.relay_passes.annotate import Annotate
from tvm_intq.relay_passes.canonicalize import CanonicalizeForQuantization
from tvm_intq.relay_passes.canonicalize_qdq import CanonicalizeQDQ
from tvm_intq.relay_passes.check_integer import CheckIntegerOnly, float_ops
from tvm_intq.relay_passes.clip_kernels_to_ops import ClipKernelsToOps
from tvm_intq.relay_passes.expose_tensors import ExposeTensors
from tvm_intq.relay_passes.fold_batch_norm import FoldBatchNorm
from tvm_intq.relay_passes.fold_to_integer import FoldToInteger
from tvm_intq.relay_passes.gate_quantization import GateQuantization
from tvm_intq.relay_passes.name_tensors import NameTensors

__all__ = [
    "Annotate",
    "CanonicalizeForQuantization",
    "CanonicalizeQDQ",
    "CheckIntegerOnly",
    "ClipKernelsToOps",
    "ExposeTensors",
    "FoldBatchNorm",
    "FoldToInteger",
    "GateQuantization",
    "NameTensors",
    "analyze",
    "float_ops",
]
