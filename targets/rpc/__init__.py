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

Modules: :mod:`.protocol` (the tracker's framing), :mod:`.tracker` (:func:`serve_tracker`,
:class:`TrackerClient`: summary, request with a timeout; :func:`rpc_config`, MetaSchedule's RPC
settings, used by :class:`tvm_intq.schedules.tune.runners.BoardsRunner`), :mod:`.board_session`
(:class:`Board`: an open session), :mod:`.jobs` (:func:`run_on_boards`: jobs spread over every
board under a key, surviving boards that die), :mod:`.agent` (:class:`BoardAgent`,
:func:`start_boards`).
"""

from tvm_intq.targets.rpc.agent import BoardProcess, start_boards
from tvm_intq.targets.rpc.board_session import (
    Board,
    check_library_for,
    check_target_for_key,
    elf_machine,
)
from tvm_intq.targets.rpc.jobs import Job, JobsOutcome, RunStopped, run_on_boards
from tvm_intq.targets.rpc.protocol import BoardBusy, BoardLost, parse_addr, set_parent_death_signal
from tvm_intq.targets.rpc.tracker import TrackerClient, error_line, rpc_config, serve_tracker

__all__ = [
    "Board",
    "BoardBusy",
    "BoardLost",
    "BoardProcess",
    "Job",
    "JobsOutcome",
    "RunStopped",
    "TrackerClient",
    "check_library_for",
    "check_target_for_key",
    "elf_machine",
    "error_line",
    "parse_addr",
    "rpc_config",
    "run_on_boards",
    "serve_tracker",
    "set_parent_death_signal",
    "start_boards",
]
