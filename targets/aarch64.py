"""64-bit ARM Linux boards, cross-linked with Debian's aarch64 g++."""

from __future__ import annotations

from tvm_intq.targets.spec import TargetSpec

_COMMON = dict(
    cross_compiler="aarch64-linux-gnu-g++",
    apt_packages=("g++-aarch64-linux-gnu",),
    # Best first; the target's CPU features (mattr) decide. Neither: plain NEON, untensorized.
    int8_dot=("arm-i8mm", "arm-sdot"),
)

AARCH64 = TargetSpec(
    name="aarch64",
    description="ARMv8.2-A Linux, Cortex-A76 class: NEON + dot product (sdot/udot), 4 cores",
    tvm_target={
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mattr": ["+neon", "+dotprod"],
        "num-cores": 4,
    },
    **_COMMON,
)

AARCH64_I8MM = TargetSpec(
    name="aarch64-i8mm",
    description="ARMv8.6-A Linux: NEON + dot product + int8 matrix multiply (smmla), 4 cores",
    tvm_target={
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mattr": ["+neon", "+dotprod", "+i8mm"],
        "num-cores": 4,
    },
    **_COMMON,
)
