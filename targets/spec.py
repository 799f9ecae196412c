"""What a deployment target is: a TVM Target, plus how to link a library for it.

A :class:`TargetSpec` bundles the TVM ``Target`` dictionary (TVM 0.27 rejects the old
``"llvm -mcpu=..."`` strings), the g++ driver that links the exported shared library
(``None`` = the host compiler) and the Debian packages that provide that driver, so a
missing tool is reported with the package that installs it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from tvm_intq.errors import IntqError

# ELF e_machine of the libraries built for a target, by the first part of its LLVM triple.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183, "riscv64": 243}


@dataclass(frozen=True)
class TargetSpec:
    """One deployment target.

    ``tvm_target`` is either the Target dict itself or a zero-argument callable returning
    it (the host target asks LLVM for the CPU name, which is computed only when needed).
    """

    name: str
    description: str
    tvm_target: Mapping[str, Any] | Callable[[], Mapping[str, Any]]
    cross_compiler: str | None = None
    cross_options: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = field(default=())
    #: Tensor intrinsics for int8 dot products, best first (names in
    #: ``tvm_intq.schedules.intrinsics.INTRINSICS``); the build packs int8 conv2d/dense for the
    #: first one the CPU features of the target support, and leaves them as they are if none.
    int8_dot: tuple[str, ...] = ()

    def __hash__(self) -> int:  # the Target dict is unhashable; names identify targets
        return hash(self.name)

    def target_dict(self) -> dict[str, Any]:
        """The TVM Target dictionary (a fresh copy; lists copied too)."""
        raw = self.tvm_target() if callable(self.tvm_target) else self.tvm_target
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in raw.items()}

    def target(self):
        """The ``tvm.target.Target`` to pass to ``tvm.compile``."""
        import tvm

        return tvm.target.Target(self.target_dict())

    @property
    def elf_machine(self) -> int:
        """ELF ``e_machine`` of the libraries built for this target (0: unknown)."""
        triple = self.target_dict().get("mtriple", "x86_64")
        return ELF_MACHINES.get(triple.split("-")[0], 0)

    @property
    def is_host(self) -> bool:
        """True when libraries for this target are linked (and loadable) on this machine."""
        return self.cross_compiler is None

    def check_toolchain(self) -> None:
        """Raise :class:`IntqError` if the cross compiler is not on PATH."""
        if self.cross_compiler is None or shutil.which(self.cross_compiler):
            return
        if self.apt_packages:
            hint = f"install {' '.join(self.apt_packages)} (make installs it)"
        else:
            hint = "install it and put it on PATH"
        raise IntqError(
            f"{self.cross_compiler} not found (needed to export for target '{self.name}'): {hint}"
        )

    def export(self, executable, path: str | PathLike) -> None:
        """Link ``executable`` (the result of ``tvm.compile``) into the shared library ``path``."""
        if self.is_host:
            executable.export_library(str(path))
            return
        self.check_toolchain()
        from tvm.support import cc

        # A fresh fcompile per export: cross_compiler's closure extends its options list in
        # place when export_library passes extra options (it does for C modules), so a reused
        # one would accumulate them.
        fcompile = cc.cross_compiler(self.cross_compiler, options=list(self.cross_options))
        # cross_compiler copies get_target_triple from create_shared, which asks the *host*
        # compiler. export_library uses it only when the module has no LLVM code of its own
        # (a Relax function without TIR kernels), to compile the packed VM bytecode blob into
        # devc.o: with the host triple that object is x86 and the cross link fails; even with
        # the cross triple, a bare "riscv64-linux-gnu" triple gives a soft-float object that
        # ld refuses to merge with lp64d code. Without the attribute, export_library writes
        # the blob as C and the cross g++ compiles it with our flags. Modules with kernels
        # keep the LLVM path, using the module's own full target (mattr included).
        del fcompile.get_target_triple
        executable.export_library(str(path), fcompile=fcompile)
