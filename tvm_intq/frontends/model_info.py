"""What every frontend reports about the model it imported, and the helpers they share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tvm_intq.errors import IntqError


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of the flow needs to know about the imported model."""

    path: str
    inputs: dict  # name -> static shape tuple (batch on axis 0)
    input_dtypes: dict  # name -> numpy dtype name
    outputs: list  # output names
    metadata: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(next(iter(self.inputs.values()))[0]) if self.inputs else 1


def parse_input_shapes(specs: list[str] | None) -> dict:
    """``["x:1x3x224x224", ...]`` (the CLI's ``--input-shape``) -> ``{"x": (1, 3, 224, 224)}``."""
    shapes = {}
    for spec in specs or []:
        m = re.fullmatch(r"(.+):(\d+(?:x\d+)*)", spec.strip())
        if not m:
            raise IntqError(
                f"--input-shape '{spec}' is not NAME:D1xD2x... (e.g. input:1x3x224x224)"
            )
        shapes[m.group(1)] = tuple(int(d) for d in m.group(2).split("x"))
    return shapes


def fmt_dims(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__
