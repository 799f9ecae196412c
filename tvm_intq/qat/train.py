"""A small fine-tuning loop that drives a strategy's schedule, and top-1 evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def fine_tune(
    model,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float = 1e-3,
    batch: int = 64,
    seed: int = 0,
    augment=None,
    loss=F.cross_entropy,
) -> list[float]:
    """Adam with a cosine learning rate over ``epochs`` passes of ``(x, y)``, minimizing
    ``loss(model output, targets)`` (default: cross-entropy on logits; ``y`` is indexed like
    ``x``); ``augment(xb, generator)`` may transform each batch. Before each step the
    strategy learns the fraction of training done, and at the end it is finished (every
    weight quantized: the model is the integer program). Returns the loss of every step."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y))
    steps = epochs * math.ceil(len(xt) / batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch):
            model.strategy.update(len(losses) / steps, dict(model.weight.items()))
            idx = order[start : start + batch]
            xb = xt[idx] if augment is None else augment(xt[idx], gen)
            value = loss(model(xb), yt[idx])
            opt.zero_grad()
            value.backward()
            opt.step()
            sched.step()
            losses.append(value.item())
    model.strategy.update(1.0, dict(model.weight.items()))
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    hits = 0
    for start in range(0, len(x), batch):
        logits = model(torch.from_numpy(np.asarray(x[start : start + batch], np.float32)))
        hits += int((logits.argmax(1).numpy() == np.asarray(y[start : start + batch])).sum())
    return hits / len(x)
