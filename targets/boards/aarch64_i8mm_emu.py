"""The emulated ARM64 board for the ``aarch64-i8mm`` target: the runtime of ``aarch64-emu``
under qemu-aarch64 emulating Neoverse-N2 (ARMv9.0-A: NEON, dotprod, i8mm; SVE2 too, which an
N2 has and our libraries do not use; no SME). The core an i8mm library is meant for, so its
counts, and the peers' on the same board, describe that machine (see aarch64_emu.py)."""

import dataclasses

from tvm_intq.targets.boards.aarch64_emu import BOARD as AARCH64

BOARD = dataclasses.replace(
    AARCH64,
    name="aarch64-i8mm-emu",
    target="aarch64-i8mm",
    key="aarch64-i8mm-emu",
    description="emulated ARM64 (qemu-aarch64 -cpu neoverse-n2: NEON, dotprod, i8mm, SVE2; "
    "no SME), the aarch64-emu runtime",
    emulator=dataclasses.replace(AARCH64.emulator, qemu_args=("-cpu", "neoverse-n2")),
    runtime=AARCH64.name,
)
