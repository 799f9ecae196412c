"""Emulated RISC-V64 board with the vector extension (RVV 1.0, VLEN 128; riscv64-emu-vlen256 is
the same at VLEN 256) under qemu-riscv64.
No riscv64 wheel of TVM exists: ``build_riscv64_emu.sh`` cross-builds libtvm_ffi and the TVM
runtime from the C++ sources the installed x86 wheels ship."""

from tvm_intq.targets.board import BoardSpec, Emulator

BOARD = BoardSpec(
    name="riscv64-emu",
    target="riscv64",
    key="riscv64-emu",
    description="emulated RV64GCV (qemu-riscv64 -cpu rv64,v=true,vlen=128), TVM runtime "
    "cross-built from the wheel's sources",
    emulator=Emulator(
        qemu="qemu-riscv64",
        qemu_args=("-cpu", "rv64,v=true,vlen=128,vext_spec=v1.0"),
        sysroot="/usr/riscv64-linux-gnu",
        build_script="build_riscv64_emu.sh",
        apt_packages=("qemu-user", "g++-riscv64-linux-gnu"),
        # QEMU 7.2 (Debian 12) aborts on vfncvt.rtz.x.f.w (decode_save_opc assertion).
        min_qemu=(8, 0),
    ),
)
