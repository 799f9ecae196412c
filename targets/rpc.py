"""The RPC harness: a tracker, boards by key, remote runs, and the emulated boards' agents.

How the pieces connect (TVM's own RPC protocol throughout; any TVM client works)::

    client (bench, MetaSchedule's RPCRunner)
       │ 1. REQUEST key ──────────────►  tracker (TVM's tvm.rpc.tracker)
       │ ◄── (host, port, matchkey) ────     ▲ PUT key (port, matchkey)
       │ 2. connect, handshake               │
       ▼                                     │
    real board:     TVM's own `python -m tvm.exec.rpc_server --tracker … --key K`
    emulated board: a BoardAgent (this module, on the host) that registers under the key,
                    accepts the client, does the handshake and hands the connected socket
                    to a fresh board process: `qemu-<arch> tvm_board_server FD WORKDIR`,
                    TVM's runtime cross-built for the board, serving this one session.

Why this route for the emulated boards (rather than TVM's Python server with
``session_constructor_args=["rpc.PopenSession", …]`` or the stock minrpc popen server):
the minrpc server cannot upload or load modules, and a constructor-args session only works
for clients that know to pass those args (MetaSchedule's RPCRunner does not). Handing the
socket to the board process makes an emulated board indistinguishable from a real one to
every client; the board runs TVM's own ``rpc.ServerLoop`` (upload, load_module of a Relax VM
library, time_evaluator), with no Python under qemu. One process per session also means a
crash or a re-upload under a loaded name cannot leave a broken board behind: the agent
starts a fresh one for the next session.

Client side: :class:`TrackerClient` (summary, request with a timeout), :class:`Board` (an
open session: upload under a unique name, check the library's architecture, load, run,
time), :func:`run_on_boards` (jobs spread over every board under a key, surviving boards
that die), :func:`rpc_config` (MetaSchedule's RPC settings for a tracker and key; the tune
command's runner is :class:`tvm_intq.schedules.runners.BoardsRunner`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import queue
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tvm_intq.errors import IntqError

from .board import ELF_MACHINE_NAMES, BoardSpec

DEFAULT_HOST = "127.0.0.1"
DEFAULT_TRACKER_PORT = 9190

log = logging.getLogger("tvm_intq.rpc")

# TVM's RPC protocol constants (tvm.rpc.base), repeated so the agent can start without
# importing TVM first (it imports it lazily for ReturnException).
RPC_MAGIC = 0xFF271
RPC_TRACKER_MAGIC = 0x2F271
RPC_CODE_SUCCESS = RPC_MAGIC
RPC_CODE_MISMATCH = RPC_MAGIC + 2


class TrackerCode:
    FAIL, SUCCESS, PING, STOP, PUT, REQUEST, UPDATE_INFO, SUMMARY, GET_PENDING_MATCHKEYS = \
        -1, 0, 1, 2, 3, 4, 5, 6, 7


class BoardBusy(IntqError):
    """No board under the key became free in time."""


class BoardLost(IntqError):
    """The board serving a session died (its connection broke)."""


# ---------------------------------------------------------------------------------------------
# Small helpers: addresses, the tracker's framing
# ---------------------------------------------------------------------------------------------
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


def _recvall(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def _sendjson(sock: socket.socket, data) -> None:
    raw = json.dumps(data).encode()
    sock.sendall(struct.pack("<i", len(raw)) + raw)


def _recvjson(sock: socket.socket):
    (size,) = struct.unpack("<i", _recvall(sock, 4))
    return json.loads(_recvall(sock, size).decode())


def _connect_tracker(addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    host, port = addr
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise IntqError(f"no RPC tracker at {host}:{port} ({reason}); start one with "
                        f"`tvm-intq tracker --host {host} --port {port}`") from None
    try:
        sock.sendall(struct.pack("<i", RPC_TRACKER_MAGIC))
        (magic,) = struct.unpack("<i", _recvall(sock, 4))
    except OSError:
        magic = None
    if magic != RPC_TRACKER_MAGIC:
        sock.close()
        raise IntqError(f"{host}:{port} is not a TVM RPC tracker")
    return sock


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """In a child (preexec_fn): get ``sig`` when the parent dies (Linux), so no board
    process outlives the process that started it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# Tracker: start one, talk to one
# ---------------------------------------------------------------------------------------------
def serve_tracker(host: str = DEFAULT_HOST, port: int = DEFAULT_TRACKER_PORT,
                  on_ready: Callable[[str, int], None] | None = None) -> None:
    """Run TVM's tracker on exactly ``host:port`` until interrupted (``tvm-intq tracker``)."""
    from tvm.rpc.tracker import Tracker

    try:
        tracker = Tracker(host, port=port, port_end=port + 1, silent=True)
    except (ValueError, OSError) as err:
        raise IntqError(f"cannot start the tracker on {host}:{port}: {err}") from None
    # TVM runs the tracker in a worker process: stop it on SIGTERM as on Ctrl-C.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if on_ready:
            on_ready(tracker.host, tracker.port)
        tracker.proc.join()
    finally:
        tracker.terminate()


class TrackerClient:
    """A connection to a tracker: what boards it knows, and requests for one."""

    def __init__(self, addr: str | tuple[str, int], connect_timeout: float = 5.0):
        self.addr = parse_addr(addr) if isinstance(addr, str) else tuple(addr)
        self.connect_timeout = connect_timeout
        _connect_tracker(self.addr, connect_timeout).close()  # fail now, with one clear line

    @property
    def url(self) -> str:
        return f"{self.addr[0]}:{self.addr[1]}"

    def summary(self) -> dict:
        with _connect_tracker(self.addr, self.connect_timeout) as sock:
            _sendjson(sock, [TrackerCode.SUMMARY])
            code, value = _recvjson(sock)
        if code != TrackerCode.SUCCESS:
            raise IntqError(f"tracker {self.url} answered {code} to a summary request")
        return value

    def boards(self, key: str) -> dict:
        """``{"total", "free", "pending", "addrs"}`` for the servers registered under ``key``."""
        s = self.summary()
        addrs = [tuple(i["addr"]) for i in s.get("server_info", []) if i.get("key") == f"server:{key}"]
        q = s.get("queue_info", {}).get(key, {"free": 0, "pending": 0})
        return {"total": len(addrs), "free": q["free"], "pending": q["pending"], "addrs": addrs}

    def keys(self) -> list[str]:
        return sorted({i["key"].split(":", 1)[1] for i in self.summary().get("server_info", [])
                       if i.get("key", "").startswith("server:")})

    def require_boards(self, key: str) -> int:
        """Number of boards under ``key``; :class:`IntqError` naming the known keys if none."""
        n = self.boards(key)["total"]
        if n == 0:
            known = ", ".join(self.keys()) or "none"
            raise IntqError(f"no board registered under key '{key}' at tracker {self.url} "
                            f"(keys with boards: {known}); start one with `tvm-intq board up` "
                            "or run TVM's rpc_server on the board")
        return n

    def request(self, key: str, timeout: float = 120.0, session_timeout: float = 0,
                priority: int = 1) -> Board:
        """An open session on a free board under ``key``, waiting at most ``timeout`` seconds
        for one to become free (:class:`BoardBusy` otherwise)."""
        import tvm.rpc

        self.require_boards(key)
        sock = _connect_tracker(self.addr, self.connect_timeout)
        try:
            _sendjson(sock, [TrackerCode.REQUEST, key, "", priority])
            sock.settimeout(timeout)
            try:
                code, value = _recvjson(sock)
            except (socket.timeout, TimeoutError):
                info = self.boards(key)
                raise BoardBusy(
                    f"no board under key '{key}' became free within {timeout:g} s "
                    f"({info['total']} registered, {info['free']} free, {info['pending']} "
                    f"requests waiting at tracker {self.url}); raise --timeout or add boards"
                ) from None
            except (ConnectionError, OSError) as err:
                raise IntqError(f"tracker {self.url} dropped the request for '{key}': {err}") from None
        finally:
            sock.close()  # the tracker drops a request whose connection is closed
        if code != TrackerCode.SUCCESS:
            raise IntqError(f"tracker {self.url} refused the request for '{key}' ({code})")
        host, port, matchkey = value
        try:
            sess = tvm.rpc.connect(host, port, matchkey, session_timeout=session_timeout)
        except Exception as err:  # noqa: BLE001 - TVM raises its own error types
            raise BoardLost(f"board {host}:{port} under '{key}' did not accept the session: "
                            f"{error_line(err)}") from None
        return Board(sess, key, f"{host}:{port}")


def error_line(err: BaseException) -> str:
    """The line of a (TVM) error message that says what went wrong."""
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if (not line or line.startswith(("Traceback", "File ", "[bt]", "Stack trace"))
                or line.endswith("Error caught from RPC call:")):
            continue
        # "Check failed: (lib_handle_ != nullptr) is false: Failed to load ..." -> "Failed to load ..."
        if line.startswith("Check failed:") and " is false: " in line:
            line = line.split(" is false: ", 1)[1]
        return line
    return type(err).__name__


# ---------------------------------------------------------------------------------------------
# An open session on one board
# ---------------------------------------------------------------------------------------------
def elf_machine(path) -> int | None:
    """ELF ``e_machine`` of a file (None if it is not an ELF file)."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return struct.unpack_from("<H" if head[5] == 1 else ">H", head, 18)[0]


def machine_name(machine: int | None) -> str:
    return ELF_MACHINE_NAMES.get(machine, f"ELF machine {machine}") if machine else "not an ELF file"


def check_library_for(board: BoardSpec | None, path, key: str = "") -> None:
    """:class:`IntqError` if ``path`` was not built for the architecture of ``board``."""
    if board is None:
        return
    got = elf_machine(path)
    if got != board.elf_machine:
        raise IntqError(
            f"{Path(path).name} is built for {machine_name(got)}, but board '{board.name}' "
            f"(key '{key or board.key}') runs {machine_name(board.elf_machine)} libraries: "
            f"compile with --target {board.target}")


def check_target_for_key(spec, key: str) -> None:
    """:class:`IntqError` if the boards under ``key`` (one of our board kinds) cannot load
    libraries built for the target definition ``spec``: said before anything is compiled."""
    from .boards import board_for_key

    board = board_for_key(key)
    if board is not None and board.elf_machine != spec.elf_machine:
        raise IntqError(f"boards under key '{key}' ({board.name}) run "
                        f"{machine_name(board.elf_machine)} libraries; --target {spec.name} builds "
                        f"{machine_name(spec.elf_machine)} ones: use --target {board.target}")


class Board:
    """One RPC session on one board (from :meth:`TrackerClient.request`)."""

    def __init__(self, session, key: str, addr: str):
        from .boards import board_for_key

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
                raise BoardLost(f"board {self.addr} ('{self.key}') died during {what}: "
                                f"{error_line(err)}") from None
            raise IntqError(f"board {self.addr} ('{self.key}'): {what} failed: "
                            f"{error_line(err)}") from None

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
                raise IntqError(f"{err} (is the library built for this board's architecture? "
                                "compile with the board's --target)") from None
            raise

    def run(self, vm, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Outputs of ``main`` for one batch, fetched back (a tuple output flattened)."""
        import tvm

        def run():
            dev = self.session.cpu()
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
            return _flatten(vm["main"](*args))

        return self._call("a run of main", run)

    def time(self, vm, inputs: list[np.ndarray], repeat: int, number: int = 1,
             warmup: int = 1) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Jobs spread over every board under a key, surviving boards that die
# ---------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One unit of remote work: ``fn(board) -> dict`` on a session of its own."""

    name: str
    fn: Callable[[Board], dict]


@dataclass
class JobsOutcome:
    results: dict = field(default_factory=dict)     # job name -> fn's dict + "board"
    lost: list = field(default_factory=list)        # "addr: reason" of boards that died
    error: str | None = None                        # why the run stopped, if it did
    boards: int = 0                                 # boards used in parallel


class RunStopped(IntqError):
    """The jobs could not all finish; ``outcome`` keeps every result measured so far."""

    def __init__(self, message: str, outcome: JobsOutcome):
        super().__init__(message)
        self.outcome = outcome


def run_on_boards(tracker: TrackerClient, key: str, jobs: list[Job], *, timeout: float = 120.0,
                  session_timeout: float = 600.0, max_attempts: int = 3,
                  on_event: Callable[[str], None] | None = None) -> JobsOutcome:
    """Run ``jobs`` on the boards under ``key``, one session per job, as many at once as
    there are boards. A job whose board dies goes back to the queue and runs on another
    (or the same, restarted) board, at most ``max_attempts`` times; results already measured
    are kept. Raises :class:`RunStopped` (carrying the partial outcome) when boards run out,
    a request times out (:class:`BoardBusy`), or a job fails for a reason of its own."""
    say = on_event or (lambda msg: None)
    n_boards = tracker.require_boards(key)
    outcome = JobsOutcome(boards=min(n_boards, len(jobs)))
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put((job, 1))
    lock = threading.Lock()
    stop = threading.Event()

    def fail(msg: str) -> None:
        with lock:
            if outcome.error is None:
                outcome.error = msg
        stop.set()

    def worker() -> None:
        while not stop.is_set():
            try:
                job, attempt = todo.get_nowait()
            except queue.Empty:
                return
            board = None
            try:
                board = tracker.request(key, timeout=timeout, session_timeout=session_timeout)
                say(f"{job.name}: running on board {board.addr}" +
                    (f" (attempt {attempt})" if attempt > 1 else ""))
                result = job.fn(board)
                result["board"] = board.addr
                with lock:
                    outcome.results[job.name] = result
                say(f"{job.name}: done on board {board.addr}")
            except BoardLost as err:
                with lock:
                    outcome.lost.append(str(err))
                say(f"{job.name}: {err}")
                if attempt >= max_attempts:
                    fail(f"{job.name}: boards died {attempt} times running it; last: {err}")
                    return
                # Let the tracker notice a dead board before asking for another one.
                time.sleep(0.5)
                try:
                    tracker.require_boards(key)
                except IntqError:
                    fail(f"every board under key '{key}' is gone ({err}); "
                         f"finished: {', '.join(outcome.results) or 'nothing'}")
                    return
                todo.put((job, attempt + 1))
            except IntqError as err:
                fail(f"{job.name}: {err}")
                return
            except Exception as err:  # noqa: BLE001 - keep the other results
                fail(f"{job.name}: {type(err).__name__}: {error_line(err)}")
                return
            finally:
                if board is not None:
                    board.close()

    threads = [threading.Thread(target=worker, name=f"board-worker-{i}", daemon=True)
               for i in range(outcome.boards)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    left = []
    while not todo.empty():
        left.append(todo.get_nowait()[0].name)
    if outcome.error is None and left:
        outcome.error = f"not run: {', '.join(left)}"
    if outcome.error:
        raise RunStopped(outcome.error, outcome)
    return outcome


# ---------------------------------------------------------------------------------------------
# Remote tuning: MetaSchedule's RPC settings for a tracker and key (schedules/runners.py)
# ---------------------------------------------------------------------------------------------
def rpc_config(tracker: str, key: str, session_timeout: float = 60.0, priority: int = 1):
    """MetaSchedule's :class:`RPCConfig` for the boards under ``key`` at ``tracker``."""
    from tvm.s_tir.meta_schedule.runner import RPCConfig

    host, port = parse_addr(tracker)
    return RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                     session_priority=priority, session_timeout_sec=int(session_timeout))


# ---------------------------------------------------------------------------------------------
# Emulated boards: the host-side agent, and starting boards
# ---------------------------------------------------------------------------------------------
class BoardAgent:
    """Registers one emulated board with the tracker under its key and serves its sessions,
    one at a time, each in a fresh board process under qemu (see the module docstring)."""

    PING_PERIOD = 2.0       # seconds between checks that our offer is still pending
    UNMATCHED_TIMEOUT = 6.0  # re-offer after a client took our key but never came

    def __init__(self, board: BoardSpec, tracker: tuple[str, int], host: str = DEFAULT_HOST,
                 port: int = 0, name: str | None = None, custom_addr: str | None = None):
        board.check_runnable()
        self.board = board
        self.tracker = tracker
        self.name = name or board.name
        self.custom_addr = custom_addr
        self.listen = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    socket.SOCK_STREAM)
        self.listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listen.bind((host, port))
        except OSError as err:
            raise IntqError(f"board {self.name}: cannot listen on {host}:{port}: {err.strerror}") from None
        self.listen.listen(4)
        self.host, self.port = self.listen.getsockname()[:2]
        self._tracker_sock: socket.socket | None = None
        self._matchkey = ""
        self._used_keys: set[str] = set()
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self.sessions = 0

    # -- tracker side
    def _tracker_connect(self) -> None:
        while not self._stopping:
            try:
                sock = _connect_tracker(self.tracker)
                _sendjson(sock, [TrackerCode.UPDATE_INFO,
                                 {"key": f"server:{self.board.key}", "addr": [self.custom_addr, self.port],
                                  "board": self.name}])
                if _recvjson(sock) != TrackerCode.SUCCESS:
                    raise IntqError("tracker refused our info")
                sock.settimeout(None)
                self._tracker_sock = sock
                return
            except (IntqError, OSError) as err:
                log.warning("board %s: tracker %s:%s not reachable (%s); retrying",
                            self.name, *self.tracker, err)
                time.sleep(1.0)

    def _offer(self) -> None:
        """Tell the tracker we are free, under a fresh match key."""
        import random

        while True:
            key = f"{self.board.key}:{random.random()}"
            if key not in self._used_keys:
                break
        self._used_keys.add(key)
        self._matchkey = key
        _sendjson(self._tracker_sock, [TrackerCode.PUT, self.board.key, [self.port, key], self.custom_addr])
        if _recvjson(self._tracker_sock) != TrackerCode.SUCCESS:
            raise OSError("tracker refused PUT")

    def _pending(self) -> list:
        _sendjson(self._tracker_sock, [TrackerCode.GET_PENDING_MATCHKEYS])
        return _recvjson(self._tracker_sock)

    # -- serving
    def _accept(self):
        """Wait for a client that holds our match key; returns (conn, options)."""
        unmatched = 0.0
        while not self._stopping:
            ready, _, _ = select.select([self.listen], [], [], self.PING_PERIOD)
            if not ready:
                if self._matchkey in self._pending():
                    unmatched = 0.0
                else:
                    unmatched += self.PING_PERIOD
                    if unmatched > self.UNMATCHED_TIMEOUT:
                        log.info("board %s: our key was taken but nobody came; re-offering", self.name)
                        self._offer()
                        unmatched = 0.0
                continue
            conn, addr = self.listen.accept()
            try:
                conn.settimeout(10.0)
                (magic,) = struct.unpack("<i", _recvall(conn, 4))
                if magic != RPC_MAGIC:
                    conn.close()
                    continue
                (keylen,) = struct.unpack("<i", _recvall(conn, 4))
                words = _recvall(conn, keylen).decode().split()
                if not words or words[0] != f"client:{self._matchkey}":
                    conn.sendall(struct.pack("<i", RPC_CODE_MISMATCH))
                    conn.close()
                    log.warning("board %s: key mismatch from %s", self.name, addr)
                    continue
                server_key = f"server:{self.board.key}".encode()
                conn.sendall(struct.pack("<ii", RPC_CODE_SUCCESS, len(server_key)) + server_key)
                conn.settimeout(None)
            except OSError:
                conn.close()
                continue
            opts = {}
            for w in words[1:]:
                if w.startswith("-timeout="):
                    opts["timeout"] = float(w[len("-timeout="):]) or None
            return conn, addr, opts
        return None, None, {}

    def _serve(self, conn: socket.socket, addr, opts: dict) -> None:
        workdir = tempfile.mkdtemp(prefix=f"tvm-intq-{self.name}-")
        fd = conn.fileno()
        self.sessions += 1
        log.info("board %s: session %d from %s:%s", self.name, self.sessions, *addr[:2])
        try:
            self._proc = subprocess.Popen(self.board.command(fd, workdir), pass_fds=(fd,), cwd=workdir,
                                          stdin=subprocess.DEVNULL,
                                          preexec_fn=set_parent_death_signal)
            try:
                code = self._proc.wait(timeout=opts.get("timeout"))
                if code != 0:
                    log.warning("board %s: board process exited with %s", self.name, code)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                log.warning("board %s: session timed out after %s s; board process killed",
                            self.name, opts["timeout"])
                try:
                    from tvm.rpc import _ffi_api

                    _ffi_api.ReturnException(fd, f"RPCSessionTimeoutError: Your {opts['timeout']}s "
                                                 "session has expired")
                except Exception:  # noqa: BLE001 - the client may be gone already
                    pass
        finally:
            self._proc = None
            conn.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def serve_forever(self, on_ready: Callable[[BoardAgent], None] | None = None) -> None:
        ready_told = False
        while not self._stopping:
            try:
                if self._tracker_sock is None:
                    self._tracker_connect()
                    if self._stopping:
                        break
                self._offer()
                if not ready_told and on_ready:
                    on_ready(self)
                    ready_told = True
                conn, addr, opts = self._accept()
                if conn is not None:
                    self._serve(conn, addr, opts)
            except (OSError, ConnectionError, ValueError) as err:
                if self._stopping:
                    break
                log.warning("board %s: lost the tracker (%s); reconnecting", self.name, err)
                if self._tracker_sock is not None:
                    self._tracker_sock.close()
                self._tracker_sock = None
                time.sleep(0.5)

    def stop(self, *_args) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        for sock in (self._tracker_sock, self.listen):
            try:
                if sock is not None:
                    sock.close()
            except OSError:
                pass


@dataclass
class BoardProcess:
    """One emulated board started by :func:`start_boards` (the agent's process; the board
    processes it starts run in the same process group)."""

    name: str
    proc: subprocess.Popen
    host: str
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the board: its agent and any board process serving a session."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_boards(board: BoardSpec, tracker: str, count: int = 1, host: str = DEFAULT_HOST,
                 log_dir: str | None = None, ready_timeout: float = 90.0,
                 custom_addr: str | None = None) -> list[BoardProcess]:
    """Start ``count`` emulated boards of kind ``board`` registered with ``tracker``; each
    board is a process group of its own (kill one with :meth:`BoardProcess.kill`), and dies
    with the process that started it. Returns once every board is registered. The tracker
    hands clients the address it sees the boards at, or ``custom_addr``."""
    board.check_runnable()
    tracker_addr = parse_addr(tracker)
    _connect_tracker(tracker_addr).close()
    started: list[BoardProcess] = []
    try:
        for i in range(count):
            name = f"{board.name}-{i}" if count > 1 else board.name
            out = subprocess.DEVNULL
            if log_dir:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                out = open(Path(log_dir) / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
            proc = subprocess.Popen(
                [sys.executable, "-m", "tvm_intq.targets.rpc", "agent", board.name,
                 "--tracker", f"{tracker_addr[0]}:{tracker_addr[1]}", "--host", host, "--name", name]
                + (["--custom-addr", custom_addr] if custom_addr else []),
                stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
            if out is not subprocess.DEVNULL:
                out.close()
            started.append(BoardProcess(name, proc, host, 0))
        deadline = time.time() + ready_timeout
        for bp in started:
            line = _readline_until(bp.proc, deadline)
            if not line.startswith("ready "):
                raise IntqError(f"board {bp.name} did not start"
                                + (f": {line}" if line else f" within {ready_timeout:g} s")
                                + (f" (log: {log_dir}/{bp.name}.log)" if log_dir else ""))
            bp.port = int(line.split()[-1].rsplit(":", 1)[1])
        return started
    except BaseException:
        for bp in started:
            bp.kill()
        raise


def _readline_until(proc: subprocess.Popen, deadline: float) -> str:
    fd = proc.stdout.fileno()
    buf = b""
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, min(1.0, deadline - time.time())))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            if b"\n" in buf:
                break
        elif proc.poll() is not None:
            break
    return buf.decode(errors="replace").strip()


def _agent_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m tvm_intq.targets.rpc agent")
    p.add_argument("board")
    p.add_argument("--tracker", required=True)
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--name")
    p.add_argument("--custom-addr")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from .boards import get_board

    try:
        agent = BoardAgent(get_board(args.board), parse_addr(args.tracker), args.host, args.port,
                           args.name, args.custom_addr)
    except IntqError as err:
        print(f"error {err}", flush=True)
        return 2
    signal.signal(signal.SIGTERM, lambda *a: (agent.stop(), sys.exit(0)))
    signal.signal(signal.SIGINT, lambda *a: (agent.stop(), sys.exit(0)))

    def ready(a: BoardAgent) -> None:
        print(f"ready {a.name} {a.host}:{a.port}", flush=True)

    agent.serve_forever(on_ready=ready)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        sys.exit(_agent_main(sys.argv[2:]))
    print("usage: python -m tvm_intq.targets.rpc agent BOARD --tracker HOST:PORT [--host H]",
          file=sys.stderr)
    sys.exit(2)
