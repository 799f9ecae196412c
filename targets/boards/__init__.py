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


__all__ = ["BOARDS", "BoardSpec", "board_for_key", "get_board"]
