"""The fine-tuned model straight to the compiler: no ONNX file in between.

A :class:`~tvm_intq.qat.model.QatModel` is built on the compiler's own canonical module
(``model.prepared``) and keeps the calibration ranges and scheme of its integer program, so the
fine-tuned program is that module with the trained weights and biases put back in place of the
ones it started from, lowered as ``tvm-intq compile`` lowers a calibrated model::

    trained_module(model)   = prepared, each conv/dense weight W and bias b -> the trained ones
    integer_program(model)  = lower(trained_module(model), model.ranges, model.scheme)

``lower`` quantizes each weight with the scheme (``Qw, sw``, and for pow2 the held bias) exactly
as the QAT forward pass does (:meth:`QatModel.quantized_layer`), so the integers are those of
the forward pass and of the QDQ route (:func:`tvm_intq.qat.onnx_io.export`, then importing the
file as a pre-quantized model), bit for bit. This route also serves a model that never had an
ONNX file (one imported from PyTorch, :mod:`tvm_intq.frontends.torch`).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.compiler.steps import lower
from tvm_intq.core.config import QuantConfig
from tvm_intq.qat.model import QatModel
from tvm_intq.relay_passes.analysis.ir_utils import const_value
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


def trained_module(model: QatModel) -> tvm.IRModule:
    """``model.prepared`` holding the fine-tuned weights and biases (float32, the shapes of the
    constants they replace): the float module whose calibration ``model.ranges`` are."""
    trained = {
        name: p.detach().cpu().numpy()
        for params in (model.weight, model.bias)
        for name, p in params.items()
    }

    def binding(bb, b, value):
        if b.var.name in trained:
            old = const_value(value.args[1])
            new = relax.const(np.asarray(trained[b.var.name], old.dtype).reshape(old.shape))
            value = relax.Call(
                value.op, [value.args[0], new, *value.args[2:]], value.attrs, value.ty_args
            )
        return bb.emit(value, b.var.name)

    return rewrite_main(model.prepared, binding)


def integer_program(model: QatModel, integer_only: bool = True) -> tvm.IRModule:
    """The fine-tuned model's integer Relax module, for :func:`tvm_intq.build` (or the
    ``intq`` pipeline of ``tvm.compile``) like the one ``tvm-intq compile`` makes: the weights
    fully quantized, as the strategy has them at the end. ``integer_only`` raises
    :class:`~tvm_intq.errors.IntqError` naming any layer left in float."""
    config = QuantConfig(scheme=model.scheme, integer_only=integer_only)
    return lower(trained_module(model), model.ranges, config)[1]
