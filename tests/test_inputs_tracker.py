"""``tvm-intq tracker``: the bad-input corpus (issue 20). A port in use, a second tracker, a
port out of range or a bad host ended in ``AttributeError: 'Tracker' object has no attribute
'host'`` (20-33 lines); a client resetting its connection printed a traceback in the
tracker's log. Now: one line each, and the tracker keeps serving."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from cli_cases import free_port, read_until, refused, start_cli, stop

from tvm_intq.targets.rpc import TrackerClient
from tvm_intq.targets.rpc.protocol import RPC_TRACKER_MAGIC

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.mark.parametrize(
    "args, words",
    [
        (["--port", "70000"], ["--port 70000", "1..65535"]),
        (["--port", "0"], ["--port 0"]),
        (["--port", "-1"], ["--port -1"]),
        (["--host", "999.1.1.1"], ["--host 999.1.1.1", "not a valid address"]),
        (["--host", "no such host!"], ["--host no such host!"]),
        (["--host", "192.0.2.1"], ["192.0.2.1", "not an address of this machine"]),
        (["--port", "x"], ["--port", "invalid int"]),
    ],
)
def test_bad_address(tmp_path, args, words):
    refused(tmp_path, ["tracker", *args], *words)


def test_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        refused(tmp_path, ["tracker", "--port", port], f"127.0.0.1:{port}", "in use")


@pytest.fixture
def tracker():
    port = free_port()
    proc = start_cli("tracker", "--port", port)
    read_until(proc, f"tracker listening on 127.0.0.1:{port}")
    yield port, proc
    stop(proc)


def test_a_second_tracker_on_the_same_port(tmp_path, tracker):
    port, _ = tracker
    refused(tmp_path, ["tracker", "--port", port], f"127.0.0.1:{port}", "in use")


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a killed client's kernel does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_reset_or_send_garbage_cost_one_line_each(tracker):
    port, proc = tracker
    for payload in (
        b"",  # connect, reset
        struct.pack("<i", RPC_TRACKER_MAGIC),  # handshake, reset
        struct.pack("<i", RPC_TRACKER_MAGIC) + struct.pack("<i", 100) + b"[4, ",  # half a message
        b"GET / HTTP/1.0\r\n\r\n",  # not the protocol at all
        b"\x01\x02",  # a short handshake
    ):
        sock = socket.create_connection(("127.0.0.1", port))
        if payload:
            sock.sendall(payload)
            time.sleep(0.2)
        _reset(sock)
    time.sleep(0.5)
    assert proc.poll() is None, "the tracker died"
    assert TrackerClient(f"127.0.0.1:{port}").summary() is not None  # still serving
    code, err = stop(proc)
    assert "Traceback" not in err, err
    assert all(line.startswith("tracker: ") for line in err.splitlines() if line.strip()), err
