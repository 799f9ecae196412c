"""Fake quantization whose forward values are the integer program's, with gradients in torch.

How the numerics are shared with the integer program (and why this way): every quantized
tensor's forward value is computed in numpy by the functions the compiler itself uses
(:mod:`tvm_intq.core.intmath` for requantize constants, rounding, lookup tables; the scheme for
``Qw, sw`` and biases), on the detached integer codes, and handed to torch through
:class:`ValueFrom`, whose backward sends the gradient to a float *surrogate* computed by torch
(the float layer on the same inputs, clamped to the representable range: the clipped
straight-through estimator). Re-deriving the rounding in torch (``torch.round`` of
``x / s``) would agree with the compiled program only up to its fixed-point ``MUL``/``S``
approximation and its round-half-up shifts, i.e. not bit for bit; calling the numpy core
does, by construction, and costs one copy per layer, which a small model does not notice.

Scales as the compiled program sees them: the quantize/dequantize constants of the QDQ
module are float32, so every :class:`~tvm_intq.core.intmath.QParams` here is rounded to float32
first (:func:`as_compiled`), as ``FoldToInteger`` reads them.
"""

from __future__ import annotations

import numpy as np
import torch

from tvm_intq.core import intmath


class ValueFrom(torch.autograd.Function):
    """``ValueFrom.apply(surrogate, exact)``: the value of ``exact``, the gradient of
    ``surrogate`` (``exact`` is a constant to autograd)."""

    @staticmethod
    def forward(ctx, surrogate, exact):
        return exact.to(surrogate.dtype).clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def as_compiled(p: intmath.QParams) -> intmath.QParams:
    """``p`` with its scale rounded to float32, as the QDQ module's constants hold it."""
    return intmath.QParams(float(np.float32(p.scale)), int(p.zero_point))


def real_range(p: intmath.QParams) -> tuple[float, float]:
    """The real values int8 codes represent: ``[s (-128 - zp), s (127 - zp)]``."""
    return p.scale * (intmath.QMIN - p.zero_point), p.scale * (intmath.QMAX - p.zero_point)


def dequantize(q: np.ndarray, p: intmath.QParams) -> np.ndarray:
    """``(q - zp) * s`` in float32, as ``relax.dequantize`` computes it (see reference.py)."""
    return (q.astype(np.int32) - np.int32(p.zero_point)).astype(np.float32) * np.float32(p.scale)


def quantize_f32(x: np.ndarray, p: intmath.QParams) -> np.ndarray:
    """``relax.quantize`` of a float tensor (a model input, or the output of an op left in
    float) as the compiled program computes it (:func:`intmath.quantize_f32`)."""
    return intmath.quantize_f32(x, p.scale, p.zero_point).astype(np.int8)


def codes_of(t: torch.Tensor, p: intmath.QParams) -> np.ndarray:
    """The int8 codes of a tensor whose values are ``dequantize(codes)`` (exact: ``|q - zp|``
    is at most 255, so float32's relative error cannot move ``t / s`` by half a step)."""
    q = np.rint(t.detach().double().numpy() / p.scale) + p.zero_point
    return q.astype(np.int64)


def quantized(surrogate: torch.Tensor, codes: np.ndarray, p: intmath.QParams) -> torch.Tensor:
    """The tensor whose value is ``dequantize(codes)`` and whose gradient is the clipped
    straight-through one of ``surrogate``: 1 inside the representable range, 0 outside."""
    lo, hi = real_range(p)
    return ValueFrom.apply(surrogate.clamp(lo, hi), torch.from_numpy(dequantize(codes, p)))
