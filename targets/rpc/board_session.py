"""An open session on one board: upload under a unique name, check the library's
architecture, load, run, time."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import numpy as np

from tvm_intq.errors import IntqError
from tvm_intq.targets.board import ELF_MACHINE_NAMES, BoardSpec
from tvm_intq.targets.boards import board_for_key, emulated_board
from tvm_intq.targets.rpc.protocol import BoardLost, error_line


def elf_machine(path) -> int | None:
    """ELF ``e_machine`` of a file (None if it is not an ELF file)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]


def machine_name(machine: int | None) -> str:
    return (
        ELF_MACHINE_NAMES.get(machine, f"ELF machine {machine}") if machine else "not an ELF file"
    )


def check_library_for(board: BoardSpec | None, path, key: str = "") -> None:
    """:class:`IntqError` if ``path`` was not built for the architecture of ``board``."""
    if board is None:
        return
    got = elf_machine(path)
    if got != board.elf_machine:
        raise IntqError(
            f"{Path(path).name} is built for {machine_name(got)}, but board '{board.name}' "
            f"(key '{key or board.key}') runs {machine_name(board.elf_machine)} libraries: "
            f"compile with --target {board.target}"
        )


def check_target_for_key(spec, key: str) -> None:
    """:class:`IntqError` if the boards under ``key`` (one of our board kinds) cannot load
    libraries built for the target definition ``spec``: said before anything is compiled."""
    board = board_for_key(key)
    if board is not None and board.elf_machine != spec.elf_machine:
        raise IntqError(
            f"boards under key '{key}' ({board.name}) run "
            f"{machine_name(board.elf_machine)} libraries; --target {spec.name} builds "
            f"{machine_name(spec.elf_machine)} ones: use --target {board.target}"
        )
    if board is not None and board.emulated:
        # An emulated board's CPU model has its target's features only (aarch64-emu is a
        # Neoverse-N1: an i8mm library would stop on an illegal instruction there).
        missing = set(spec.target_dict().get("mattr", ())) - set(
            board.target_spec().target_dict().get("mattr", ())
        )
        if missing:
            raise IntqError(
                f"boards under key '{key}' ({board.name}, {board.description}) lack "
                f"{', '.join(sorted(missing))} that --target {spec.name} uses: use "
                f"--key {emulated_board(spec.name).key}"
            )


class Board:
    """One RPC session on one board (from :meth:`TrackerClient.request`)."""

    def __init__(self, session, key: str, addr: str):
        self.session = session
        self.key = key
        self.addr = addr
        self.spec = board_for_key(key)

    @property
    def emulated(self) -> bool:
        return bool(self.spec and self.spec.emulated)

    def close(self) -> None:
        self.session = None  # dropping the last reference closes the connection

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def alive(self) -> bool:
        """Whether the session still answers (a cheap remote call)."""
        try:
            self.session.get_function("tvm.rpc.server.workpath")
            return True
        except Exception:  # noqa: BLE001
            return False

    def _call(self, what: str, fn, *args):
        """Run a remote operation; a broken connection becomes :class:`BoardLost`."""
        try:
            return fn(*args)
        except IntqError:
            raise
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types
            if not self.alive():
                raise BoardLost(
                    f"board {self.addr} ('{self.key}') died during {what}: {error_line(err)}"
                ) from None
            raise IntqError(
                f"board {self.addr} ('{self.key}'): {what} failed: {error_line(err)}"
            ) from None

    def upload(self, path) -> str:
        """Upload a library under a fresh name (a re-upload under the name of a loaded
        library crashed boards); returns the remote name."""
        check_library_for(self.spec, path, self.key)
        path = Path(path)
        name = f"{path.stem}-{uuid.uuid4().hex[:8]}{path.suffix}"
        self._call(f"upload of {path.name}", self.session.upload, str(path), name)
        return name

    def load_vm(self, remote_name: str):
        """The Relax VM of an uploaded library, on the board's CPU."""
        from tvm import relax

        def load():
            mod = self.session.load_module(remote_name)
            return relax.VirtualMachine(mod, self.session.cpu())

        try:
            return self._call(f"loading {remote_name}", load)
        except BoardLost:
            raise
        except IntqError as err:
            if "ELF" in str(err) or "cannot open shared object" in str(err):
                raise IntqError(
                    f"{err} (is the library built for this board's architecture? "
                    "compile with the board's --target)"
                ) from None
            raise

    def run(self, vm, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of ``main`` for one batch, fetched back (a tuple output flattened)."""
        import tvm

        def run():
            dev = self.session.cpu()
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
            return _flatten(vm["main"](*args))

        return self._call("a run of main", run)

    def time(
        self, vm, inputs: list[np.ndarray], repeat: int, number: int = 1, warmup: int = 1
    ) -> np.ndarray:
        """Seconds per call of ``main``: ``warmup`` calls, then ``repeat`` measurements of
        ``number`` calls each (TVM's time_evaluator, timed on the board)."""
        import tvm

        def measure():
            dev = self.session.cpu()
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
            vm.set_input("main", *args)
            for _ in range(warmup):
                vm.invoke_stateful("main")
            timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)
            return np.asarray(timer("main").results, dtype=np.float64)

        return self._call("time_evaluator", measure)


def _flatten(value) -> list[np.ndarray]:
    import tvm

    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    return [a for v in value for a in _flatten(v)]
