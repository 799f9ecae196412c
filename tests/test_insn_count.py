"""Instructions executed on the emulated boards (QEMU plugin + runner): deterministic, and
proportional to the work done."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import missing

from tvm_intq.errors import IntqError
from tvm_intq.targets.boards import get_board
from tvm_intq.targets.insn_count import counting_tools, executed_instructions, run_counted

pytestmark = pytest.mark.integration  # whole models, boards or processes

BOARDS = ["aarch64-emu", "riscv64-emu", "riscv64-emu-vlen256"]


def require_counting(board):
    try:
        counting_tools(board)
    except IntqError as err:
        missing(str(err))


def scale_library(n: int, board, folder):
    """A TIR kernel ``b[i] = 3 a[i] + 1`` over ``n`` int32 values, as MetaSchedule builds one:
    a library whose ``main`` takes its buffers, output included."""
    import tvm
    from tvm import te

    a = te.placeholder((n,), "int32", name="a")
    b = te.compute((n,), lambda i: a[i] * 3 + 1, name="b")
    spec = board.target_spec()
    path = folder / f"scale{n}.so"
    spec.export(
        tvm.compile(tvm.IRModule({"main": te.create_prim_func([a, b])}), spec.target()), path
    )
    return path


@pytest.mark.parametrize("name", BOARDS)
def test_counts_are_deterministic_and_scale_with_work(name, tmp_path):
    board = get_board(name)
    require_counting(board)
    counts = {}
    for n in (1 << 14, 1 << 15):
        lib = scale_library(n, board, tmp_path)
        args = [np.arange(n, dtype=np.int32), np.zeros(n, np.int32)]
        first = executed_instructions(lib, board, args)
        assert executed_instructions(lib, board, args) == first  # a second process
        counts[n] = first
    ratio = counts[1 << 15] / counts[1 << 14]
    assert 1.9 < ratio < 2.05, counts


def test_run_counted_reports_each_call_and_the_library_blocks(tmp_path):
    board = get_board("aarch64-emu")
    require_counting(board)
    n = 1 << 12
    lib = scale_library(n, board, tmp_path)
    run = run_counted(
        lib, board, [np.ones(n, np.int32), np.zeros(n, np.int32)], calls=3, blocks=True
    )
    assert len(run.per_call) == 3 and run.per_call[1] == run.per_call[2] > 0
    assert run.load_base > 0 and run.blocks
    # Instructions inside the library are a part of what the calls executed (the rest is the
    # runtime's argument handling): the kernel's loop is most of it.
    in_library = sum(n_insns * times for (_, n_insns), times in run.blocks.items())
    assert 0.5 * sum(run.per_call) < in_library < sum(run.per_call)


def test_missing_function_is_reported(tmp_path):
    board = get_board("aarch64-emu")
    require_counting(board)
    lib = scale_library(16, board, tmp_path)
    with pytest.raises(IntqError, match="has no function nope"):
        run_counted(lib, board, [], function="nope", calls=1)
