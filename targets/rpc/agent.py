"""Emulated boards: the host-side agent that registers with the tracker and hands each
session's socket to a fresh board process under qemu, and starting boards
(``tvm-intq board up``; the agent runs as ``python -m tvm_intq.targets.rpc.agent``)."""

from __future__ import annotations

import argparse
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tvm_intq.errors import IntqError
from tvm_intq.targets.board import BoardSpec
from tvm_intq.targets.rpc.protocol import (
    DEFAULT_HOST,
    RPC_CODE_MISMATCH,
    RPC_CODE_SUCCESS,
    RPC_MAGIC,
    TrackerCode,
    connect_tracker,
    parse_addr,
    recv_all,
    recv_json,
    send_json,
    set_parent_death_signal,
    wait_for_tracker,
)

log = logging.getLogger("tvm_intq.rpc")


class BoardAgent:
    """Registers one emulated board with the tracker under its key and serves its sessions,
    one at a time, each in a fresh board process under qemu (see the module docstring)."""

    PING_PERIOD = 2.0  # seconds between checks that our offer is still pending
    UNMATCHED_TIMEOUT = 6.0  # re-offer after a client took our key but never came

    def __init__(
        self,
        board: BoardSpec,
        tracker: tuple[str, int],
        host: str = DEFAULT_HOST,
        port: int = 0,
        name: str | None = None,
        custom_addr: str | None = None,
    ):
        board.check_runnable()
        self.board = board
        self.tracker = tracker
        self.name = name or board.name
        self.custom_addr = custom_addr
        self.listen = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
        )
        self.listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listen.bind((host, port))
        except OSError as err:
            raise IntqError(
                f"board {self.name}: cannot listen on {host}:{port}: {err.strerror}"
            ) from None
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
                sock = connect_tracker(self.tracker)
                send_json(
                    sock,
                    [
                        TrackerCode.UPDATE_INFO,
                        {
                            "key": f"server:{self.board.key}",
                            "addr": [self.custom_addr, self.port],
                            "board": self.name,
                        },
                    ],
                )
                if recv_json(sock) != TrackerCode.SUCCESS:
                    raise IntqError("tracker refused our info")
                sock.settimeout(None)
                self._tracker_sock = sock
                return
            except (IntqError, OSError) as err:
                log.warning(
                    "board %s: tracker %s:%s not reachable (%s); retrying",
                    self.name,
                    *self.tracker,
                    err,
                )
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
        send_json(
            self._tracker_sock,
            [TrackerCode.PUT, self.board.key, [self.port, key], self.custom_addr],
        )
        if recv_json(self._tracker_sock) != TrackerCode.SUCCESS:
            raise OSError("tracker refused PUT")

    def _pending(self) -> list:
        send_json(self._tracker_sock, [TrackerCode.GET_PENDING_MATCHKEYS])
        return recv_json(self._tracker_sock)

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
                        log.info(
                            "board %s: our key was taken but nobody came; re-offering", self.name
                        )
                        self._offer()
                        unmatched = 0.0
                continue
            conn, addr = self.listen.accept()
            try:
                conn.settimeout(10.0)
                (magic,) = struct.unpack("<i", recv_all(conn, 4))
                if magic != RPC_MAGIC:
                    conn.close()
                    continue
                (keylen,) = struct.unpack("<i", recv_all(conn, 4))
                words = recv_all(conn, keylen).decode().split()
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
                    opts["timeout"] = float(w[len("-timeout=") :]) or None
            return conn, addr, opts
        return None, None, {}

    def _serve(self, conn: socket.socket, addr, opts: dict) -> None:
        workdir = tempfile.mkdtemp(prefix=f"tvm-intq-{self.name}-")
        fd = conn.fileno()
        self.sessions += 1
        log.info("board %s: session %d from %s:%s", self.name, self.sessions, *addr[:2])
        try:
            self._proc = subprocess.Popen(
                self.board.command(fd, workdir),
                pass_fds=(fd,),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                preexec_fn=set_parent_death_signal,
            )
            try:
                code = self._proc.wait(timeout=opts.get("timeout"))
                if code != 0:
                    log.warning("board %s: board process exited with %s", self.name, code)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                log.warning(
                    "board %s: session timed out after %s s; board process killed",
                    self.name,
                    opts["timeout"],
                )
                try:
                    from tvm.rpc import _ffi_api

                    _ffi_api.ReturnException(
                        fd, f"RPCSessionTimeoutError: Your {opts['timeout']}s session has expired"
                    )
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


def start_boards(
    board: BoardSpec,
    tracker: str,
    count: int = 1,
    host: str = DEFAULT_HOST,
    log_dir: str | None = None,
    ready_timeout: float = 90.0,
    custom_addr: str | None = None,
    wait: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> list[BoardProcess]:
    """Start ``count`` emulated boards of kind ``board`` registered with ``tracker``; each
    board is a process group of its own (kill one with :meth:`BoardProcess.kill`), and dies
    with the process that started it. Returns once every board is registered. The tracker
    hands clients the address it sees the boards at, or ``custom_addr``. A tracker that does
    not listen yet is waited for, at most ``wait`` seconds (``on_wait`` is told)."""
    board.check_runnable()
    tracker_addr = parse_addr(tracker)
    wait_for_tracker(tracker_addr, wait, on_wait)
    started: list[BoardProcess] = []
    try:
        for i in range(count):
            name = f"{board.name}-{i}" if count > 1 else board.name
            out = subprocess.DEVNULL
            if log_dir:
                Path(log_dir).mkdir(parents=True, exist_ok=True)
                out = open(Path(log_dir) / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tvm_intq.targets.rpc.agent",
                    board.name,
                    "--tracker",
                    f"{tracker_addr[0]}:{tracker_addr[1]}",
                    "--host",
                    host,
                    "--name",
                    name,
                ]
                + (["--custom-addr", custom_addr] if custom_addr else []),
                stdout=subprocess.PIPE,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM),
            )
            if out is not subprocess.DEVNULL:
                out.close()
            started.append(BoardProcess(name, proc, host, 0))
        deadline = time.time() + ready_timeout
        for bp in started:
            line = _readline_until(bp.proc, deadline)
            if not line.startswith("ready "):
                raise IntqError(
                    f"board {bp.name} did not start"
                    + (f": {line}" if line else f" within {ready_timeout:g} s")
                    + (f" (log: {log_dir}/{bp.name}.log)" if log_dir else "")
                )
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
    p = argparse.ArgumentParser(prog="python -m tvm_intq.targets.rpc.agent")
    p.add_argument("board")
    p.add_argument("--tracker", required=True)
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--name")
    p.add_argument("--custom-addr")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from tvm_intq.targets.boards import get_board

    try:
        agent = BoardAgent(
            get_board(args.board),
            parse_addr(args.tracker),
            args.host,
            args.port,
            args.name,
            args.custom_addr,
        )
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
    sys.exit(_agent_main(sys.argv[1:]))
