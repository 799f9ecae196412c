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


def bounded_db(x: float) -> float:
    """A dB figure JSON can hold: an exact match (+inf) or a zero signal (-inf) as +-999."""
    return float(min(max(x, -999.0), 999.0))


def output_errors(refs, outs, parts=None, names=None) -> list[dict]:
    """SQNR (Eq. 25) of every output, and of every part of it: ``parts[i]`` is None or
    ``[(part name, boolean mask over output i), ...]`` (the slices a detection head
    concatenates: boxes, class scores, feature maps). Returns per output ``{"name",
    "sqnr_db", "parts": [{"name", "sqnr_db"}, ...]}`` (``parts`` empty for a plain output)."""
    result = []
    for i, (r, q) in enumerate(zip(refs, outs)):
        r, q = np.asarray(r, np.float64), np.asarray(q, np.float64)
        entry = {
            "name": names[i] if names and i < len(names) else f"output {i}",
            "sqnr_db": bounded_db(sqnr_db(r, q)),
            "parts": [],
        }
        for part, mask in (parts[i] if parts and i < len(parts) and parts[i] else []) or []:
            entry["parts"].append({"name": part, "sqnr_db": bounded_db(sqnr_db(r[mask], q[mask]))})
        result.append(entry)
    return result


def worst_part(errors: list[dict]) -> dict:
    """``{"output", "part", "sqnr_db"}`` of the lowest SQNR over every output and part of
    :func:`output_errors` (``part`` None: a whole output)."""
    cands = [(e["sqnr_db"], e["name"], None) for e in errors if not e["parts"]]
    cands += [(p["sqnr_db"], e["name"], p["name"]) for e in errors for p in e["parts"]]
    db, output, part = min(cands, key=lambda c: c[0])
    return {"output": output, "part": part, "sqnr_db": db}
