"""The tracker: start one (``tvm-intq tracker``), ask one for boards (:class:`TrackerClient`),
and MetaSchedule's RPC settings for a tracker and key."""

from __future__ import annotations

import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable

from tvm_intq.errors import IntqError
from tvm_intq.targets.rpc.board_session import Board
from tvm_intq.targets.rpc.protocol import (
    DEFAULT_HOST,
    DEFAULT_TRACKER_PORT,
    BoardBusy,
    BoardLost,
    TrackerCode,
    connect_tracker,
    error_line,
    parse_addr,
    recv_json,
    send_json,
)


def serve_tracker(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_TRACKER_PORT,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Run TVM's tracker (its ``TrackerServerHandler``) on exactly ``host:port`` in this
    process until interrupted (``tvm-intq tracker``).

    The socket is bound here rather than by ``tvm.rpc.tracker.Tracker``, whose worker process
    reports a port in use or a bad address as an ``AttributeError`` from its destructor: a
    bad port, an address that is not this machine's and a port in use (a second tracker) each
    get one line. A client that resets its connection or sends garbage costs that connection
    only, logged in one line (:func:`_one_line_logs`)."""
    # Bound before TVM loads (a bad port says so at once), listening only once the handler
    # can answer: a board that connects earlier is refused and retries.
    sock = bind_listener(host, port, "tracker", listen=False)

    import asyncio

    from tvm.rpc.base import random_key
    from tvm.rpc.tracker import TrackerServerHandler

    _listen(sock, host, port, "tracker")
    _one_line_logs()
    asyncio.set_event_loop(asyncio.new_event_loop())
    handler = TrackerServerHandler(sock, random_key("tracker"))
    # Stop on SIGTERM as on Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if on_ready:
            on_ready(host, sock.getsockname()[1])
        handler.run()
    finally:
        sock.close()


def bind_listener(host: str, port: int, what: str, listen: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port`` (and listening, with ``listen``), or one
    :class:`IntqError` line saying why not (bad port, unknown host, not an address of this
    machine, port in use)."""
    if not 0 < port < 65536:
        raise IntqError(f"--port {port}: a TCP port is 1..65535")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise IntqError(
            f"--host {host}: not a valid address ({getattr(err, 'strerror', None) or err})"
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as err:
        sock.close()
        raise IntqError(f"cannot start the {what} on {host}:{port}: {_why(err, host)}") from None
    if listen:
        _listen(sock, host, port, what)
    return sock


def _listen(sock: socket.socket, host: str, port: int, what: str) -> None:
    try:
        sock.listen(64)
    except OSError as err:  # another process bound the port too and listened first
        sock.close()
        raise IntqError(f"cannot start the {what} on {host}:{port}: {_why(err, host)}") from None


def _why(err: OSError, host: str) -> str:
    if err.errno == errno.EADDRINUSE:
        return "the port is in use (another tracker?); give another --port"
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    if err.errno == errno.EACCES:
        return "permission denied (ports below 1024 need root)"
    return err.strerror or type(err).__name__


class _OneLine(logging.Formatter):
    """A log record as one line: the message and, for an exception, its last line only."""

    def format(self, record):
        text = record.getMessage().splitlines()[0] if record.getMessage() else ""
        if record.exc_info and record.exc_info[1] is not None:
            err = record.exc_info[1]
            text += f": {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return f"tracker: {record.levelname.lower()}: {text}".rstrip(": ")


def _one_line_logs() -> None:
    """TVM's tracker handler and tornado log a client's broken connection with a traceback
    (``exc_info``), e.g. a reset in the middle of a message: one line each instead, on
    stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    for name in ("RPCTracker", "tornado.application", "tornado.general", "asyncio"):
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.propagate = False
        log.setLevel(logging.WARNING)


class TrackerClient:
    """A connection to a tracker: what boards it knows, and requests for one."""

    def __init__(self, addr: str | tuple[str, int], connect_timeout: float = 5.0):
        self.addr = parse_addr(addr) if isinstance(addr, str) else tuple(addr)
        self.connect_timeout = connect_timeout
        connect_tracker(self.addr, connect_timeout).close()  # fail now, with one clear line

    @property
    def url(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def summary(self) -> dict:
        with connect_tracker(self.addr, self.connect_timeout) as sock:
            send_json(sock, [TrackerCode.SUMMARY])
            code, value = recv_json(sock)
        if code != TrackerCode.SUCCESS:
            raise IntqError(f"tracker {self.url} answered {code} to a summary request")
        return value

    def boards(self, key: str) -> dict:
        """``{"total", "free", "pending", "addrs"}`` for the servers registered under ``key``."""
        s = self.summary()
        addrs = [
            tuple(i["addr"]) for i in s.get("server_info", []) if i.get("key") == f"server:{key}"
        ]
        q = s.get("queue_info", {}).get(key, {"free": 0, "pending": 0})
        return {"total": len(addrs), "free": q["free"], "pending": q["pending"], "addrs": addrs}

    def keys(self) -> list[str]:
        return sorted(
            {
                i["key"].split(":", 1)[1]
                for i in self.summary().get("server_info", [])
                if i.get("key", "").startswith("server:")
            }
        )

    def require_boards(self, key: str) -> int:
        """Number of boards under ``key``; :class:`IntqError` naming the known keys if none."""
        n = self.boards(key)["total"]
        if n == 0:
            known = ", ".join(self.keys()) or "none"
            raise IntqError(
                f"no board registered under key '{key}' at tracker {self.url} "
                f"(keys with boards: {known}); start one with `tvm-intq board up` "
                "or run TVM's rpc_server on the board"
            )
        return n

    def request(
        self, key: str, timeout: float = 120.0, session_timeout: float = 0, priority: int = 1
    ) -> Board:
        """An open session on a free board under ``key``, waiting at most ``timeout`` seconds
        for one to become free (:class:`BoardBusy` otherwise)."""
        import tvm.rpc

        self.require_boards(key)
        sock = connect_tracker(self.addr, self.connect_timeout)
        try:
            send_json(sock, [TrackerCode.REQUEST, key, "", priority])
            sock.settimeout(timeout)
            try:
                code, value = recv_json(sock)
            except TimeoutError:
                info = self.boards(key)
                raise BoardBusy(
                    f"no board under key '{key}' became free within {timeout:g} s "
                    f"({info['total']} registered, {info['free']} free, {info['pending']} "
                    f"requests waiting at tracker {self.url}); raise --timeout or add boards"
                ) from None
            except (ConnectionError, OSError) as err:
                raise IntqError(
                    f"tracker {self.url} dropped the request for '{key}': {err}"
                ) from None
        finally:
            sock.close()  # the tracker drops a request whose connection is closed
        if code != TrackerCode.SUCCESS:
            raise IntqError(f"tracker {self.url} refused the request for '{key}' ({code})")
        host, port, matchkey = value
        try:
            sess = tvm.rpc.connect(host, port, matchkey, session_timeout=session_timeout)
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types
            raise BoardLost(
                f"board {host}:{port} under '{key}' did not accept the session: {error_line(err)}"
            ) from None
        return Board(sess, key, f"{host}:{port}")


def rpc_config(tracker: str, key: str, session_timeout: float = 60.0, priority: int = 1):
    """MetaSchedule's :class:`RPCConfig` for the boards under ``key`` at ``tracker``."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    host, port = parse_addr(tracker)
    return RPCConfig(
        tracker_host=host,
        tracker_port=port,
        tracker_key=key,
        session_priority=priority,
        session_timeout_sec=int(session_timeout),
    )
