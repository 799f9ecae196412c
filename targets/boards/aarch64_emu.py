"""Emulated ARM64 board: TVM's own aarch64 runtime (libtvm_runtime.so and libtvm_ffi.so from
the aarch64 wheels of apache-tvm / apache-tvm-ffi on PyPI) serving RPC under qemu-aarch64.
Built by ``build_aarch64_emu.sh``."""

from tvm_intq.targets.board import BoardSpec, Emulator

BOARD = BoardSpec(
    name="aarch64-emu",
    target="aarch64",
    key="aarch64-emu",
    description="emulated ARM64 (qemu-aarch64 -cpu max: NEON, dotprod, i8mm), "
    "TVM's aarch64 runtime",
    emulator=Emulator(
        qemu="qemu-aarch64",
        qemu_args=("-cpu", "max"),
        sysroot="/usr/aarch64-linux-gnu",
        build_script="build_aarch64_emu.sh",
        apt_packages=("qemu-user", "g++-aarch64-linux-gnu"),
    ),
)
