"""Quantization schemes: the policy the annotate pass consults, in one object per scheme.

A scheme decides *how* a tensor is quantized (symmetric or asymmetric activations, per-channel
symmetric weights); the passes that insert and fold quantization are generic mechanism. Adding
a scheme is adding one class here and registering it.
"""

from __future__ import annotations

import numpy as np

from . import intmath
from .errors import IntqError


class Scheme:
    """Base policy: per-tensor activations, symmetric per-output-channel int8 weights."""

    name: str = ""
    symmetric_activations: bool = False

    def activation(self, lo: float, hi: float) -> intmath.QParams:
        """Parameters for an activation whose clipping range is [lo, hi]."""
        return intmath.activation_qparams(lo, hi, symmetric=self.symmetric_activations)

    def weights(self, w: np.ndarray, axis: int):
        """``(Qw int8, sw per channel)`` for a constant weight with output channels on ``axis``."""
        return intmath.weight_qparams(w, axis)


class HybridAsymmetric(Scheme):
    """S2's hybrid asymmetric scheme: asymmetric activations (scale + zero point), symmetric
    per-channel weights. The zero point costs nothing at run time: it folds into ``ADD``."""

    name = "hybrid-asym"


class Symmetric(Scheme):
    """The baseline the papers compare against: activations symmetric too (zero point 0)."""

    name = "symmetric"
    symmetric_activations = True


SCHEMES = {cls.name: cls for cls in (HybridAsymmetric, Symmetric)}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]()
    except KeyError:
        raise IntqError(f"unknown scheme '{name}' (known: {', '.join(SCHEMES)})") from None
