"""Emulated ARM64 board: TVM's own aarch64 runtime (libtvm_runtime.so and libtvm_ffi.so from
the aarch64 wheels of apache-tvm / apache-tvm-ffi on PyPI) serving RPC under qemu-aarch64.
Built by ``build_aarch64_emu.sh``.

The emulated CPU is the core the ``aarch64`` target describes (ARMv8.2-A, Cortex-A76 class:
NEON + dotprod), Neoverse-N1, not QEMU's ``max``: on ``max`` (SVE, SME, i8mm) glibc's string
functions and the peers' kernels (ONNX Runtime, XNNPACK/KleidiAI) take SVE/SME code paths that
the target's CPU does not have, and their instruction counts would describe another machine.
An i8mm library runs on ``aarch64-i8mm-emu``."""

from tvm_intq.targets.board import BoardSpec, Emulator

BOARD = BoardSpec(
    name="aarch64-emu",
    target="aarch64",
    key="aarch64-emu",
    description="emulated ARM64 (qemu-aarch64 -cpu neoverse-n1: NEON, dotprod; no i8mm, SVE, SME), "
    "TVM's aarch64 runtime",
    emulator=Emulator(
        qemu="qemu-aarch64",
        qemu_args=("-cpu", "neoverse-n1"),
        sysroot="/usr/aarch64-linux-gnu",
        build_script="build_aarch64_emu.sh",
        apt_packages=("qemu-user", "g++-aarch64-linux-gnu"),
    ),
)
