"""How a layer's weights enter the forward pass while fine-tuning: three strategies.

Each strategy maps the float weight ``W`` (the trained parameter) and its quantized value
``Q(W) = sw * Qw`` (the scheme's per-channel int8 weights, exactly what the integer program
holds) to the weight the layer computes with, and says when the forward pass *is* the
integer program (every weight fully quantized). Activations are quantized the same way in
all three (:mod:`.fake_quant`: the integer program's values, clipped straight-through
gradient). The training loop calls :meth:`Strategy.update` with the fraction of training
done before each step, and with 1.0 at the end, which quantizes everything.
"""

from __future__ import annotations

import numpy as np
import torch

from tvm_intq.qat.fake_quant import ValueFrom


class Strategy:
    name = ""

    def update(self, progress: float, weights: dict) -> None:
        """Advance to ``progress`` (0 = start, 1 = done) given the current ``{layer: W}``."""

    @property
    def integer(self) -> bool:
        """Is every weight fully quantized now (so the forward pass is the integer program)?"""
        return True

    def weight(self, name: str, w: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Ste(Strategy):
    """Plain QAT with the straight-through estimator (the baseline)::

        forward: W_q = Q(W)            backward: dL/dW = dL/dW_q

    The forward pass is the integer program from the first step."""

    name = "ste"

    def weight(self, name, w, wq):
        return ValueFrom.apply(w, wq)


class AlphaBlend(Strategy):
    """alpha-QAT (S0, ``000_...``): the loss sees an affine combination of the quantized and
    the full-precision weights instead of ``Q(W)`` behind a straight-through estimator::

        W_alpha = alpha * Q(W) + (1 - alpha) * W,      dW_alpha/dW = 1 - alpha

    The gradient is the exact derivative of ``W_alpha`` (``Q`` is piecewise constant: no
    straight-through approximation), so the weights learn through the full-precision part
    while ``alpha`` rises linearly from ``start`` to 1 at ``end`` (fraction of training;
    S0's abstract gives the blend, not the schedule). At ``alpha = 1`` the forward pass is the
    integer program."""

    name = "alpha"

    def __init__(self, start: float = 0.0, end: float = 1.0):
        if not 0.0 <= start <= 1.0 or not 0.0 < end <= 1.0:
            raise ValueError(
                f"alpha schedule start={start}, end={end}: need 0 <= start <= 1 and 0 < end <= 1"
            )
        self.start, self.end = float(start), float(end)
        self.alpha = self.start

    def update(self, progress, weights):
        t = min(max(progress / self.end, 0.0), 1.0)
        self.alpha = self.start + (1.0 - self.start) * t

    @property
    def integer(self):
        return self.alpha >= 1.0

    def weight(self, name, w, wq):
        if self.integer:
            return wq
        return self.alpha * wq.detach() + (1.0 - self.alpha) * w


class Incremental(Strategy):
    """Incremental quantization (S3, ``003_...``, IOIQ with its pruning strategy): the
    weights are quantized group by group; the layer computes with the composite weight::

        W_c = M * Q(W) + (1 - M) * W,      dW_c/dW = 1

    with the mask ``M`` (1 = quantized) updated at each stage: at stage ``k`` the fraction
    ``fractions[k]`` of each layer's weights is quantized, those of largest ``|W|`` first
    (S3's pruning strategy, better than random in its Table 3), and masks only grow. As S3
    has it, quantized weights keep being updated (through the straight-through estimator)
    while the others learn in float. The last fraction must be 1: the final stage is the
    integer program."""

    name = "incremental"

    def __init__(self, fractions=(0.5, 0.75, 0.875, 1.0)):
        fractions = [float(f) for f in fractions]
        if (
            not fractions
            or fractions[-1] != 1.0
            or any(b < a for a, b in zip(fractions, fractions[1:]))
            or fractions[0] <= 0
        ):
            raise ValueError(
                f"incremental fractions {fractions}: need increasing values in (0, 1] ending with 1"
            )
        self.fractions = fractions
        self.stage = -1
        self.masks: dict[str, torch.Tensor] = {}

    @property
    def fraction(self) -> float:
        return self.fractions[max(self.stage, 0)]

    def update(self, progress, weights):
        stage = min(int(progress * len(self.fractions)), len(self.fractions) - 1)
        if stage == self.stage:
            return
        self.stage = stage
        for name, w in weights.items():
            old = self.masks.get(name)
            self.masks[name] = torch.from_numpy(
                grow_mask(
                    w.detach().numpy(),
                    None if old is None else old.numpy().astype(bool),
                    self.fraction,
                )
            )

    @property
    def integer(self):
        return self.fraction >= 1.0

    def weight(self, name, w, wq):
        m = self.masks.get(name)
        if m is None:
            raise RuntimeError("Incremental.update() must run before the first forward pass")
        return m * ValueFrom.apply(w, wq) + (1.0 - m) * w


def grow_mask(w: np.ndarray, old: np.ndarray | None, fraction: float) -> np.ndarray:
    """The mask (float32, 1 = quantized) holding ``round(fraction * w.size)`` entries: all of
    ``old``, then the largest ``|w|`` (ties: lower flat index first)."""
    flat = np.abs(w.reshape(-1).astype(np.float64))
    taken = np.zeros(flat.size, bool) if old is None else old.reshape(-1)
    k = max(int(round(fraction * flat.size)), int(taken.sum()))
    order = np.lexsort((np.arange(flat.size), -flat, ~taken))  # old first, then by |w|
    mask = np.zeros(flat.size, np.float32)
    mask[order[:k]] = 1.0
    return mask.reshape(w.shape)


STRATEGIES = {cls.name: cls for cls in (Ste, AlphaBlend, Incremental)}
