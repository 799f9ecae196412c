"""Relax graph passes of tvm-intq (the folder keeps the design card's name, ``relay_passes``:
Relay is gone from TVM 0.27 and these are Relax passes).

Each is an ordinary ``tvm.transform`` pass that drops into a ``tvm.transform.Sequential``::

    CanonicalizeForQuantization()  float module -> inference form with named tensors
    CanonicalizeQDQ()              imported QDQ module -> the same, int8 weights kept
    ExposeTensors(names)           main also returns the named tensors (calibration)
    Annotate(ranges, scheme)       quantize/dequantize pairs at the quantization points
    FoldToInteger()                QDQ graph -> integer arithmetic (requantize, LUTs, ...)
    CheckIntegerOnly()             error naming any float op left inside
"""

from .annotate import Annotate
from .canonicalize import CanonicalizeForQuantization, ClipKernelsToOps
from .canonicalize_qdq import CanonicalizeQDQ
from .check_integer import CheckIntegerOnly, float_ops
from .expose_tensors import ExposeTensors
from .fold_batch_norm import FoldBatchNorm
from .fold_to_integer import FoldToInteger
from .name_tensors import NameTensors
from .quant_points import analyze

__all__ = [
    "Annotate", "CanonicalizeForQuantization", "CanonicalizeQDQ", "CheckIntegerOnly",
    "ClipKernelsToOps", "ExposeTensors", "FoldBatchNorm", "FoldToInteger", "NameTensors",
    "analyze", "float_ops",
]
