"""Quantization-aware fine-tuning (the ``qat`` extra: PyTorch).

    model = prepare_qat("model.onnx", calib, scheme="pow2", strategy=AlphaBlend())
    fine_tune(model, x, y, epochs=3)           # any torch loop works: model is an nn.Module
    export(model, "model.qdq.onnx")            # tvm-intq compile model.qdq.onnx -o model.so
    integer = integer_program(model)           # or straight on: tvm_intq.build(integer)

The forward pass computes what the compiled integer program computes (:mod:`.model`); the
strategies (:mod:`.strategies`) are plain STE, S0's alpha blend and S3's incremental
quantization; the export is a QDQ ONNX model holding the fine-tuned int8 weights and the
calibrated scales, which ``tvm-intq compile`` folds into the same program without
re-calibrating (:mod:`.onnx_io`); or, without a file, the fine-tuned integer Relax module
itself, the same integers (:mod:`.to_relax`).
"""

from tvm_intq.qat.model import QatModel
from tvm_intq.qat.onnx_io import export, fold_batch_norm, prepare_qat
from tvm_intq.qat.strategies import STRATEGIES, AlphaBlend, Incremental, Ste, Strategy
from tvm_intq.qat.to_relax import integer_program, trained_module
from tvm_intq.qat.train import evaluate, fine_tune

__all__ = [
    "QatModel",
    "prepare_qat",
    "export",
    "integer_program",
    "trained_module",
    "fold_batch_norm",
    "fine_tune",
    "evaluate",
    "Strategy",
    "Ste",
    "AlphaBlend",
    "Incremental",
    "STRATEGIES",
]
