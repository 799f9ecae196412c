"""Board kinds, one file each: every module in this folder that defines ``BOARD`` (a
:class:`~tvm_intq.targets.board.BoardSpec`) is a board kind. Add your board by adding a file
(copy ``rk3588.py``); ``tvm-intq boards`` lists them.

The emulated boards (``aarch64-emu``, ``riscv64-emu``) also keep their runtime build here:
``board_server.cc`` and ``build_<board>.sh`` (run by ``make boards``).
"""

from __future__ import annotations

import importlib
import pkgutil

from tvm_intq.errors import IntqError
from tvm_intq.targets import get_target
from tvm_intq.targets.board import BoardSpec


def _discover() -> dict[str, BoardSpec]:
    found: dict[str, BoardSpec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        board = getattr(module, "BOARD", None)
        if isinstance(board, BoardSpec):
            if board.name in found:
                raise IntqError(f"two board files define board '{board.name}'")
            found[board.name] = board
    return found


BOARDS: dict[str, BoardSpec] = _discover()


def get_board(name: str) -> BoardSpec:
    """The board kind called ``name``; :class:`IntqError` listing the known ones otherwise."""
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise IntqError(f"unknown board {name!r}: known boards are {', '.join(BOARDS)}") from None


def board_for_key(key: str) -> BoardSpec | None:
    """The board kind whose servers register under RPC key ``key`` (None: not one of ours)."""
    return next((b for b in BOARDS.values() if b.key == key), None)


def emulated_board(target: str) -> BoardSpec:
    """The emulated board that runs libraries built for the target called ``target``: the one
    made for that target (its CPU model has the target's features, and only those: counts on it
    describe the target's machine), else one whose target has the same LLVM triple and every
    CPU feature of ``target``."""
    want = get_target(target).target_dict()
    emulated = [b for b in BOARDS.values() if b.emulated]
    for board in emulated:
        if board.target == target:
            return board
    for board in emulated:
        have = board.target_spec().target_dict()
        if have.get("mtriple") == want.get("mtriple") and set(want.get("mattr", ())) <= set(
            have.get("mattr", ())
        ):
            return board
    raise IntqError(
        f"no emulated board runs {target} libraries; emulated boards: "
        + ", ".join(f"{b.name} ({b.target})" for b in emulated)
    )


__all__ = ["BOARDS", "BoardSpec", "board_for_key", "emulated_board", "get_board"]
