"""Quantization schemes: the policy the annotate pass consults, in one object per scheme.

A scheme decides *how* a tensor is quantized (symmetric or asymmetric activations, per-channel
symmetric weights); the passes that insert and fold quantization are generic mechanism. Adding
a scheme is adding one class here and registering it.
"""

from __future__ import annotations

import numpy as np

from tvm_intq.core import intmath
from tvm_intq.errors import IntqError


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

    def bias(self, b: np.ndarray, s_acc: np.ndarray) -> np.ndarray | None:
        """The bias a conv/dense adds, as the integer program will hold it, given the
        accumulator scale ``s_acc = s_in * sw`` (per channel); None keeps the float bias
        (requantize rounds it to the accumulator's grid)."""
        return None

    #: pow2 scales: calibration refines every range to the least-MSE power of two among
    #: ``exponent_span`` exponents each side of the range's own (None: ranges are kept).
    exponent_span: int | None = None

    def for_tensor(self, name: str) -> Scheme:
        """The scheme for one quantization point (its activation, and the weights and bias of
        the layer computing it): this one, except for a per-layer scheme."""
        return self


class HybridAsymmetric(Scheme):
    """S2's hybrid asymmetric scheme: asymmetric activations (scale + zero point), symmetric
    per-channel weights. The zero point costs nothing at run time: it folds into ``ADD``."""

    name = "hybrid-asym"


class Symmetric(Scheme):
    """The baseline the papers compare against: activations symmetric too (zero point 0)."""

    name = "symmetric"
    symmetric_activations = True


class PowerOfTwo(Scheme):
    """S3's INT-SE (``003_...``): every scale is a power of two, ``T = D * 2^s``, so every
    conv/dense requantize is a pure shift (``MUL = 1``, :func:`intmath.fixed_point`).

    * Activations: symmetric int8 with scale ``2^s`` (INT-SE has no zero point). ``s`` is
      chosen per tensor by MSE over ``s0 - 2 ... s0 + 2`` on the calibration histogram, ``s0``
      the exponent the calibrator's range gives (with ``--calibrator minmax`` that is S3's
      min/max exponent); see :class:`~tvm_intq.calibration.pow2_exponent.Pow2Exponent`.
    * Weights: one shared exponent per layer, as S3 sets it ("each layer's parameters get a
      single shared exponent"), by MSE over ``s0 - 2 ... s0 + 2`` with ``s0`` the min/max
      exponent of the whole tensor; ``per_channel=True`` searches one exponent per output
      channel instead (not in the paper).
    * Bias: INT-SE data whose exponent ``s_b`` S3 restricts to ``[s_t, s_t + 7]``,
      ``s_t = s_in + s_w`` the accumulator's exponent, so that the bias joins the accumulator
      by a left shift of 0..7 bits; ``s_b`` is the MSE-best exponent in that window. S3 gives
      8 bits for weights and activations but no width for the bias data: ``bias_bits``
      defaults to 16, because 8-bit data clips the bias of one conv of the bundled model
      (|b| up to 1.81 against 127 * 2^(s_t + 7) = 0.99) and costs 3 points top-1 there
      (98.1 % -> 94.8 %, output SQNR 24.9 -> 7.5 dB); ``bias_bits=8`` gives that variant.
    """

    name = "pow2"
    symmetric_activations = True
    SPAN = 2  # candidates s0 - 2 ... s0 + 2 (S3 Table 2)
    exponent_span = SPAN
    BIAS_SHIFT = 7  # s_b in [s_t, s_t + 7]

    def __init__(self, per_channel: bool = False, bias_bits: int = 16):
        self.per_channel = bool(per_channel)
        self.bias_bits = int(bias_bits)

    def activation(self, lo: float, hi: float) -> intmath.QParams:
        """Scale ``2^e`` for the smallest ``e`` whose grid covers ``max(|lo|, |hi|)``: the
        calibration wrapper already returns ranges of the form ``[-127 2^e, 127 2^e]``."""
        t = max(-float(lo), float(hi), 0.0)
        if not np.isfinite(t):
            raise ValueError(f"clipping range [{lo}, {hi}] is not finite")
        return intmath.QParams(scale=float(2.0 ** intmath.pow2_minmax_exponent(t)), zero_point=0)

    def weights(self, w: np.ndarray, axis: int):
        w = np.asarray(w, np.float64)
        axis = axis % w.ndim
        channels = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        groups = channels if self.per_channel else channels.reshape(1, -1)
        exps = [
            intmath.pow2_search(g, intmath.pow2_minmax_exponent(np.max(np.abs(g))), span=self.SPAN)[
                0
            ]
            for g in groups
        ]
        sw = np.broadcast_to(np.exp2(np.asarray(exps, np.float64)), (w.shape[axis],)).copy()
        return intmath.quantize_weight(w, sw, axis), sw

    def bias(self, b: np.ndarray, s_acc: np.ndarray) -> np.ndarray:
        b = np.asarray(b, np.float64)
        e_t = intmath.pow2_exponent_of(s_acc)
        if np.any(e_t == intmath.NOT_POW2):
            return None  # the input is not pow2 (a per-layer mix): no accumulator exponent
        e_t = np.broadcast_to(e_t, b.shape)
        qmax = 2 ** (self.bias_bits - 1) - 1
        groups = (
            [np.arange(b.size)]
            if np.all(e_t == e_t.flat[0])
            else [np.array([i]) for i in range(b.size)]
        )
        out = np.empty(b.size)
        flat, et = b.reshape(-1), e_t.reshape(-1)
        for idx in groups:
            lowest = int(et[idx[0]])
            center = intmath.pow2_minmax_exponent(np.max(np.abs(flat[idx])), qmax)
            e, _ = intmath.pow2_search(
                flat[idx],
                center,
                span=self.SPAN,
                qmin=-qmax - 1,
                qmax=qmax,
                lowest=lowest,
                highest=lowest + self.BIAS_SHIFT,
            )
            out[idx] = intmath.int_se(flat[idx], e, -qmax - 1, qmax)
        return out.reshape(b.shape)


class PerLayer(Scheme):
    """A scheme per quantization point (``--scheme auto``, :mod:`tvm_intq.search.scheme_choice`
    chooses them by measured error): ``choices[name]`` for the named points, ``default``
    (hybrid-asym) for the others. Each point's ranges must come from calibrating with its
    own scheme; built without choices it is the default everywhere."""

    name = "auto"

    def __init__(self, choices: dict | None = None, default: str = "hybrid-asym"):
        self.default = get_scheme(default) if isinstance(default, str) else default
        self.choices = {
            k: get_scheme(v) if isinstance(v, str) else v for k, v in (choices or {}).items()
        }
        self.symmetric_activations = self.default.symmetric_activations
        self.exponent_span = self.default.exponent_span

    def for_tensor(self, name: str) -> Scheme:
        return self.choices.get(name, self.default)

    def activation(self, lo, hi):
        return self.default.activation(lo, hi)

    def weights(self, w, axis):
        return self.default.weights(w, axis)

    def bias(self, b, s_acc):
        return self.default.bias(b, s_acc)


def held_bias(
    scheme: Scheme,
    bias: np.ndarray,
    s_in: float,
    sw: np.ndarray,
    acc_axis: int,
    ndim: int,
    sign: float = 1.0,
) -> np.ndarray | None:
    """The bias constant (``bias``'s dtype) a conv/dense adds (``sign`` -1: subtracts) once
    ``scheme`` holds it as the integer program will, given the input scale ``s_in`` and the
    weight scales ``sw`` (accumulator scale ``s_in * sw`` along ``acc_axis`` of an
    ``ndim``-D result); None when the scheme keeps the float bias. Annotate and the QAT model
    (:mod:`tvm_intq.qat`) both call this."""
    shape = [1] * ndim
    shape[acc_axis] = -1
    s_acc = s_in * np.asarray(sw, np.float64).reshape(shape)
    b = np.broadcast_to(
        bias.astype(np.float64).reshape((1,) * (len(shape) - bias.ndim) + bias.shape),
        np.broadcast_shapes((1,) * (len(shape) - bias.ndim) + bias.shape, s_acc.shape),
    )
    held = scheme.bias(sign * b, np.broadcast_to(s_acc, b.shape))
    return None if held is None else (sign * held).astype(bias.dtype)


SCHEMES = {cls.name: cls for cls in (HybridAsymmetric, Symmetric, PowerOfTwo, PerLayer)}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]()
    except KeyError:
        raise IntqError(f"unknown scheme '{name}' (known: {', '.join(SCHEMES)})") from None
