"""The emulated RISC-V64 board with VLEN 256: the same runtime as ``riscv64-emu`` (VLEN 128),
under qemu with wider vector registers, so one library is checked at two vector lengths
(the RVV kernels are vector-length agnostic)."""

import dataclasses

from tvm_intq.targets.boards.riscv64_emu import BOARD as VLEN128

BOARD = dataclasses.replace(
    VLEN128,
    name="riscv64-emu-vlen256",
    key="riscv64-emu-vlen256",
    description="emulated RV64GCV (qemu-riscv64 -cpu rv64,v=true,vlen=256), "
    "the riscv64-emu runtime",
    emulator=dataclasses.replace(
        VLEN128.emulator, qemu_args=("-cpu", "rv64,v=true,vlen=256,vext_spec=v1.0")
    ),
    runtime=VLEN128.name,
)
