"""What a board is: a machine reached over TVM RPC, under a tracker key, for one target.

A :class:`BoardSpec` names a board kind (``rk3588``, ``aarch64-emu``), the
:class:`~tvm_intq.targets.TargetSpec` that libraries for it are compiled with, and the RPC key
its servers register under with the tracker. A real board runs TVM's own RPC server and needs
nothing from us; an *emulated* board (``emulator`` set) is started on this machine by
``tvm-intq board up``: a TVM runtime cross-built for the board's architecture, serving RPC
under qemu-user (see :mod:`tvm_intq.targets.rpc` for how it is wired, and
``targets/boards/build_*.sh`` for how its runtime is built).

One file per board kind lives in ``targets/boards/``; see :mod:`tvm_intq.targets.boards`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tvm_intq.errors import IntqError

# What to call an ELF e_machine in messages.
ELF_MACHINE_NAMES = {62: "x86-64", 183: "aarch64", 243: "riscv64"}

_REPO = Path(__file__).resolve().parents[1]


def boards_build_dir() -> Path:
    """Where ``make boards`` puts the emulated boards' runtimes (``build/boards`` in the
    source tree; ``TVM_INTQ_BOARDS_DIR`` overrides it)."""
    return Path(os.environ.get("TVM_INTQ_BOARDS_DIR", _REPO / "build" / "boards"))


@dataclass(frozen=True)
class Emulator:
    """How an emulated board runs: qemu-user over a runtime we build.

    ``build_script`` (in ``targets/boards/``) writes ``bin/tvm_board_server`` and ``lib/``
    (libtvm_runtime.so, libtvm_ffi.so) into ``build/boards/<board name>/``.
    """

    qemu: str  # qemu-user binary, e.g. qemu-aarch64
    qemu_args: tuple[str, ...]  # e.g. ("-cpu", "max")
    sysroot: str  # -L: the Debian cross sysroot with libc/libstdc++
    build_script: str  # file name in targets/boards/
    apt_packages: tuple[str, ...] = ("qemu-user",)
    min_qemu: tuple[int, int] = (0, 0)  # oldest QEMU that runs TVM's code for this board

    def qemu_path(self) -> str | None:
        """The qemu-user binary: the one ``make boards`` fetched (fetch_qemu.sh, Debian's
        qemu-user 10 from bookworm-backports), else the system's."""
        fetched = boards_build_dir() / "qemu" / "bin" / self.qemu
        return str(fetched) if os.access(fetched, os.X_OK) else shutil.which(self.qemu)

    def qemu_version(self) -> tuple[int, int] | None:
        path = self.qemu_path()
        if path is None:
            return None
        out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"version (\d+)\.(\d+)", out)
        return (int(m[1]), int(m[2])) if m else None


@dataclass(frozen=True)
class BoardSpec:
    """One board kind."""

    name: str
    target: str  # name of a TargetSpec in tvm_intq.targets.TARGETS
    key: str  # RPC key its servers register under with the tracker
    description: str
    emulator: Emulator | None = None
    setup: tuple[str, ...] = field(default=())  # for real boards: what to install on it
    #: Emulated boards that differ only in emulator options (e.g. the RISC-V VLEN) share the
    #: runtime `make boards` built for this board name (default: their own name).
    runtime: str = ""

    @property
    def emulated(self) -> bool:
        return self.emulator is not None

    def target_spec(self):
        from tvm_intq.targets import get_target

        return get_target(self.target)

    @property
    def elf_machine(self) -> int:
        """ELF e_machine of the libraries this board loads."""
        return self.target_spec().elf_machine

    # ----------------------------------------------------------------- emulated boards
    def runtime_dir(self) -> Path:
        return boards_build_dir() / (self.runtime or self.name)

    def server_binary(self) -> Path:
        return self.runtime_dir() / "bin" / "tvm_board_server"

    def is_built(self) -> bool:
        return self.server_binary().is_file()

    def check_runnable(self) -> None:
        """Raise :class:`IntqError` naming what is missing to start this emulated board."""
        if not self.emulated:
            raise IntqError(
                f"{self.name} is a real board: run on it `python -m tvm.exec.rpc_server "
                f"--tracker HOST:PORT --key {self.key}` (see README, Measuring on your board)"
            )
        emu = self.emulator
        if emu.qemu_path() is None:
            raise IntqError(
                f"{emu.qemu} not found (needed to emulate board '{self.name}'): "
                f"run `make boards` or install {' '.join(emu.apt_packages)}"
            )
        version = emu.qemu_version()
        if version is not None and version < emu.min_qemu:
            need = ".".join(map(str, emu.min_qemu))
            raise IntqError(
                f"{emu.qemu_path()} is QEMU {version[0]}.{version[1]}; board "
                f"'{self.name}' needs QEMU >= {need}: run `make boards` (fetches "
                "Debian's qemu-user 10 from bookworm-backports)"
            )
        if not Path(emu.sysroot).is_dir():
            raise IntqError(
                f"{emu.sysroot} missing (the cross sysroot board '{self.name}' runs "
                f"with): install the cross g++ of target {self.target} (make installs it)"
            )
        if not self.is_built():
            raise IntqError(
                f"board '{self.name}' is not built ({self.server_binary()} missing): "
                f"run `make boards`"
            )

    def command(self, sockfd: int, workdir: str) -> list[str]:
        """The command serving one RPC session on the connected socket ``sockfd``."""
        emu = self.emulator
        return [
            emu.qemu_path() or emu.qemu,
            "-L",
            emu.sysroot,
            *emu.qemu_args,
            str(self.server_binary()),
            str(sockfd),
            workdir,
        ]
