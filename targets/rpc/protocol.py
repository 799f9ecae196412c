"""TVM's RPC tracker protocol as the tracker speaks it: constants, framing, addresses.

Repeated from ``tvm.rpc.base`` so that a board agent starts without importing TVM."""

from __future__ import annotations

import ctypes
import json
import signal
import socket
import struct

from tvm_intq.errors import IntqError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TRACKER_PORT = 9190


# TVM's RPC protocol constants (tvm.rpc.base), repeated so the agent can start without
# importing TVM first (it imports it lazily for ReturnException).
RPC_MAGIC = 0xFF271
RPC_TRACKER_MAGIC = 0x2F271
RPC_CODE_SUCCESS = RPC_MAGIC
RPC_CODE_MISMATCH = RPC_MAGIC + 2


class TrackerCode:
    FAIL, SUCCESS, PING, STOP, PUT, REQUEST, UPDATE_INFO, SUMMARY, GET_PENDING_MATCHKEYS = (
        -1,
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
    )


class BoardBusy(IntqError):
    """No board under the key became free in time."""


class BoardLost(IntqError):
    """The board serving a session died (its connection broke)."""


def parse_addr(text: str, default_port: int = DEFAULT_TRACKER_PORT) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"HOST"``) -> ``(host, port)``; :class:`IntqError` if malformed."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = port, str(default_port)
    try:
        port_n = int(port)
    except ValueError:
        port_n = -1
    if not host or not 0 < port_n < 65536:
        raise IntqError(f"bad address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, port_n


def recv_all(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def send_json(sock: socket.socket, data) -> None:
    raw = json.dumps(data).encode()
    sock.sendall(struct.pack("<i", len(raw)) + raw)


def recv_json(sock: socket.socket):
    (size,) = struct.unpack("<i", recv_all(sock, 4))
    return json.loads(recv_all(sock, size).decode())


class NoTracker(IntqError):
    """Nothing accepts connections at the tracker's address (yet)."""


def connect_tracker(addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    host, port = addr
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise NoTracker(
            f"no RPC tracker at {host}:{port} ({reason}); start one with "
            f"`tvm-intq tracker --host {host} --port {port}`"
        ) from None
    try:
        sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
        (magic,) = struct.unpack("<i", recv_all(sock, 4))
    except TimeoutError:  # accepted but not answered: a tracker still starting, or a busy one
        sock.close()
        raise NoTracker(
            f"the RPC tracker at {host}:{port} accepted the connection but did not answer "
            f"within {timeout:g} s"
        ) from None
    except OSError:
        magic = None
    if magic != RPC_TRACKER_MAGIC:
        sock.close()
        raise IntqError(f"{host}:{port} is not a TVM RPC tracker")
    return sock


def wait_for_tracker(addr: tuple[str, int], wait: float, on_wait=None) -> None:
    """Return once the tracker at ``addr`` answers, retrying every second for at most ``wait``
    seconds (a board started just before its tracker waits for it, as TVM's ``rpc_server``
    does); ``on_wait(text)`` is told once that we wait. :class:`IntqError` after ``wait``
    seconds, or at once if something else than a tracker answers there."""
    import time

    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            connect_tracker(addr).close()
            return
        except NoTracker as err:
            if time.monotonic() >= deadline:
                if not told:
                    raise
                raise NoTracker(f"{err} (waited {wait:g} s)") from None
            if not told and on_wait is not None:
                on_wait(f"waiting up to {wait:g} s for the RPC tracker at {addr[0]}:{addr[1]}")
            told = True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """In a child (preexec_fn): get ``sig`` when the parent dies (Linux), so no board
    process outlives the process that started it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def error_line(err: BaseException) -> str:
    """The line of a (TVM) error message that says what went wrong."""
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if (
            not line
            or line.startswith(("Traceback", "File ", "[bt]", "Stack trace"))
            or line.endswith("Error caught from RPC call:")
        ):
            continue
        # "Check failed: (lib_handle_ != nullptr) is false: Failed to load ..."
        #   -> "Failed to load ..."
        if line.startswith("Check failed:") and " is false: " in line:
            line = line.split(" is false: ", 1)[1]
        return line
    return type(err).__name__
