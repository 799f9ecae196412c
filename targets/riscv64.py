"""64-bit RISC-V Linux boards with the vector extension (RV64GCV), cross-linked with
Debian's riscv64 g++."""

from __future__ import annotations

from tvm_intq.targets.spec import TargetSpec

RISCV64 = TargetSpec(
    name="riscv64",
    description="RV64GCV Linux (vector extension 1.0), 4 cores",
    tvm_target={
        "kind": "llvm",
        "mtriple": "riscv64-linux-gnu",
        "mattr": ["+m", "+a", "+f", "+d", "+c", "+v"],
        "num-cores": 4,
    },
    cross_compiler="riscv64-linux-gnu-g++",
    cross_options=("-march=rv64gcv", "-mabi=lp64d"),
    apt_packages=("g++-riscv64-linux-gnu",),
    int8_dot=("rvv-vwmacc",),  # widening multiply-adds, any VLEN >= 128
)
