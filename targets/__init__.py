"""Deployment targets: one module per target kind, collected in :data:`TARGETS`.

Adding a target kind = a new module defining a :class:`TargetSpec` + one line below.
"""

from __future__ import annotations

from tvm_intq.errors import IntqError
from tvm_intq.targets.aarch64 import AARCH64, AARCH64_I8MM
from tvm_intq.targets.host import HOST
from tvm_intq.targets.riscv64 import RISCV64
from tvm_intq.targets.spec import TargetSpec

TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        HOST,
        AARCH64,
        AARCH64_I8MM,
        RISCV64,
    )
}


def get_target(name: str) -> TargetSpec:
    """The target called ``name``; :class:`IntqError` listing the known names otherwise."""
    try:
        return TARGETS[name]
    except (KeyError, TypeError):
        known = ", ".join(TARGETS)
        raise IntqError(f"unknown target {name!r}: known targets are {known}") from None


__all__ = ["TARGETS", "TargetSpec", "get_target", "HOST", "AARCH64", "AARCH64_I8MM", "RISCV64"]
