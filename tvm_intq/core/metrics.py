"""Quantization error metrics of S2 (Eqs. 23-25), between float values r and dequantized q."""

from __future__ import annotations

import numpy as np


def manhattan(r: np.ndarray, q: np.ndarray) -> float:
    """Eq. 23: sum |r - q|."""
    return float(np.sum(np.abs(np.asarray(r, np.float64) - q)))


def euclidean(r: np.ndarray, q: np.ndarray) -> float:
    """Eq. 24: sqrt(sum (r - q)^2)."""
    return float(np.sqrt(np.sum(np.square(np.asarray(r, np.float64) - q))))


def sqnr_db(r: np.ndarray, q: np.ndarray) -> float:
    """Eq. 25: 10 log10(sum r^2 / sum (r - q)^2); +inf when q equals r exactly."""
    r = np.asarray(r, np.float64)
    noise = np.sum(np.square(r - q))
    signal = np.sum(np.square(r))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))
