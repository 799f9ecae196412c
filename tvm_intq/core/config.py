"""How to quantize: the user's choices as one plain object (no TVM)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Percentile is robust on the spiky distributions real inputs have (an image background, ReLU
# zeros); KL clips hard there (the bundled model: top-1 97.1 % vs 98.0 %, output SQNR 10.9 dB
# vs 33.5 dB; a TensorRT-style KL on |x| gave 21 %, see calibration/kl.py).
DEFAULT_CALIBRATOR = "percentile"


@dataclass
class QuantConfig:
    """How to quantize: scheme (policy), calibrator and its options, strictness."""

    scheme: str = "hybrid-asym"
    calibrator: str = DEFAULT_CALIBRATOR
    calibrator_options: dict = field(default_factory=dict)
    integer_only: bool = False
    progress: bool = True
    #: Hybrid precision: quantization points kept float, or "auto"
    #: (see :mod:`tvm_intq.search.float_layers`) with a target: top-1 within ``max_drop`` points of
    #: float and/or ``min_sqnr`` dB.
    float_layers: list | str = field(default_factory=list)
    max_drop: float | None = None
    min_sqnr: float | None = None
    #: Time limit of the searches (``scheme="auto"``, ``float_layers="auto"``) together, in
    #: minutes; None: none (see :mod:`tvm_intq.search.budget`).
    search_minutes: float | None = 10.0


def parse_float_layers(value) -> list[str] | str:
    """``"auto"``, or a comma-separated list of quantization point names."""
    if value is None:
        return []
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        return [n.strip() for n in value.split(",") if n.strip()]
    return list(value)
