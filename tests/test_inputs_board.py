"""``tvm-intq board up``: the bad-input corpus (issue 20), and a board started before its
tracker: it exited at once; it now waits for the tracker (bounded by ``--wait``), saying so,
as TVM's own ``rpc_server`` retries."""

from __future__ import annotations

import time

import pytest
from cli_cases import free_port, read_until, refused, start_cli, stop
from test_boards import require_built

from tvm_intq.targets.boards import get_board

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.mark.parametrize(
    "args, words",
    [
        (["--count", "0"], ["--count 0", "1..64"]),
        (["--count", "1000"], ["--count 1000"]),
        (["--tracker", "127.0.0.1:notaport"], ["bad address", "notaport"]),
        (["--tracker", "127.0.0.1:70000"], ["bad address"]),
        (["--wait", "-1"], ["--wait -1", ">= 0"]),
        (["--wait", "inf"], ["--wait", "finite"]),
    ],
)
def test_flags(tmp_path, args, words):
    refused(tmp_path, ["board", "up", "aarch64-emu", *args], *words)


def test_unknown_board(tmp_path):
    refused(tmp_path, ["board", "up", "pdp11-emu"], "pdp11-emu")


def test_log_dir_is_a_file(tmp_path):
    (tmp_path / "logs").write_text("")
    refused(tmp_path, ["board", "up", "aarch64-emu", "--log-dir", "logs"], "--log-dir", "file")


def test_no_tracker_within_the_wait(tmp_path):
    require_built(get_board("aarch64-emu"))
    port = free_port()
    start = time.monotonic()
    line = refused(
        tmp_path,
        ["board", "up", "aarch64-emu", "--tracker", f"127.0.0.1:{port}", "--wait", "2"],
        f"no RPC tracker at 127.0.0.1:{port}",
        "waited 2 s",
    )
    assert time.monotonic() - start < 60, line


@pytest.mark.integration
def test_board_started_before_its_tracker_waits_for_it(tmp_path):
    require_built(get_board("aarch64-emu"))
    port = free_port()
    board = start_cli("board", "up", "aarch64-emu", "--tracker", f"127.0.0.1:{port}")
    tracker = None
    try:
        read_until(board, f"waiting up to 60 s for the RPC tracker at 127.0.0.1:{port}")
        time.sleep(2)  # the tracker comes a little later
        tracker = start_cli("tracker", "--port", port)
        read_until(board, "registered with", timeout=120)
    finally:
        code, err = stop(board)
        if tracker is not None:
            stop(tracker)
    assert "Traceback" not in err, err
