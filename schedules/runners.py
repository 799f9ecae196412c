"""Measuring tuning candidates on the boards under a tracker key (``tvm-intq tune --tracker``).

    candidate kernel --(host: LocalBuilder, cross-linked .so, tune.export_kernel)--> artifact
    artifact --(RPCRunner: a session on a free board under the key, upload, time_evaluator)-->

:class:`BoardsRunner` is MetaSchedule's RPCRunner (one worker per board registered when the
tune starts, so every board under the key measures) with what a long tune on real boards needs:

* sessions come from :meth:`TrackerClient.request`, whose wait for a free board has a limit
  (RPCRunner's own request waits forever when no board is left);
* a board that dies takes the candidates it was running with it: those results come back
  marked :data:`~.tune.NOT_MEASURED` (not recorded; a resumed tune measures them again) and
  the next batches go to the boards still registered;
* with no board left (or no tracker) the tune stops with one line (:func:`~.tune.stop`); the
  database keeps every record measured so far.
"""

from __future__ import annotations

import functools

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import (EvaluatorConfig, PyRunner, PyRunnerFuture, RPCRunner,
                                            RunnerResult)
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

from ..errors import IntqError
from ..targets.rpc import TrackerClient, rpc_config
from .tune import NOT_MEASURED, _ignore_sigint, stop


def _board_session(tracker: str, key: str, wait: float, session_timeout: float, _config):
    """RPCRunner's ``f_create_session`` (runs in its worker processes)."""
    return TrackerClient(tracker).request(key, timeout=wait, session_timeout=session_timeout).session


def _alloc_arguments(session, device, args_info, alloc_repeat):
    """RPCRunner's ``f_alloc_argument``: inputs drawn on the host and copied to the board.
    TVM's default asks the board for ``tvm.contrib.random``, which a runtime built without
    USE_RANDOM (ours under qemu among them) does not have. Small non-negative integers: values
    do not change a kernel's time, and shift amounts must stay below the bit width."""
    rng = np.random.default_rng(0)

    def fill(tensor):
        dtype = np.dtype(tensor.dtype)
        shape = tuple(int(d) for d in tensor.shape)
        values = (rng.integers(0, 8, shape) if dtype.kind in "iub" else rng.random(shape))
        tensor.copyfrom(values.astype(dtype))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def _cleanup(session, remote_path) -> None:
    """RPCRunner's ``f_cleanup``: removes the uploaded library. TVM's default also removes
    ``""`` (the session folder), which our boards refuse; every board drops its session folder
    when the session ends anyway."""
    if session is not None and remote_path is not None:
        session.remove(remote_path)


@derived_object
class _Unmeasured(PyRunnerFuture):
    def __init__(self, message: str):
        self.message = message

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return RunnerResult(None, NOT_MEASURED + self.message)


@derived_object
class _Watched(PyRunnerFuture):
    """A candidate's run; its failure is "board lost" when the key has lost boards since."""

    def __init__(self, inner, runner: BoardsRunner, boards_at_start: int):
        self.inner, self.runner, self.boards_at_start = inner, runner, boards_at_start

    def done(self) -> bool:
        return self.inner.done()

    def result(self) -> RunnerResult:
        res = self.inner.result()
        if res.error_msg is None:
            return res
        left = self.runner.boards_left()
        if left >= self.boards_at_start:  # the candidate failed, not the board
            return res
        return RunnerResult(None, f"{NOT_MEASURED}board lost during the run "
                                  f"({left} left under '{self.runner.key}'): "
                                  f"{str(res.error_msg).strip().splitlines()[-1]}")


@derived_object
class BoardsRunner(PyRunner):
    """MetaSchedule runner over every board under ``key`` at ``tracker`` (module docstring).

    ``wait``: seconds a candidate may wait for a free board; ``session_timeout``: seconds one
    candidate's session may last (upload, load, timing). Call :meth:`shutdown` when done.
    """

    def __init__(self, tracker: str, key: str, *, wait: float = 120.0,
                 session_timeout: float = 120.0, number: int = 3, repeat: int = 1,
                 min_repeat_ms: int = 0):
        self.client, self.key = TrackerClient(tracker), key
        boards = self.client.require_boards(key)  # no tracker / no board: one line, now
        self.inner = RPCRunner(
            rpc_config=rpc_config(tracker, key, session_timeout),
            evaluator_config=EvaluatorConfig(number=number, repeat=repeat,
                                             min_repeat_ms=min_repeat_ms,
                                             enable_cpu_cache_flush=False),
            f_create_session=functools.partial(_board_session, tracker, key, wait,
                                               session_timeout),
            f_alloc_argument=_alloc_arguments, f_cleanup=_cleanup,
            max_workers=boards, initializer=_ignore_sigint)

    def boards_left(self) -> int:
        try:
            return self.client.boards(self.key)["total"]
        except IntqError:  # the tracker is gone: no board can be reached
            return 0

    def run(self, runner_inputs):
        try:
            boards = self.client.boards(self.key)["total"]
            why = f"no board left under key '{self.key}' at tracker {self.client.url}"
        except IntqError as err:
            boards, why = 0, str(err)
        if boards == 0:
            stop(why)
            return [_Unmeasured(why) for _ in runner_inputs]
        return [_Watched(f, self, boards) for f in self.inner.run(runner_inputs)]

    def shutdown(self) -> None:
        """End the measuring workers (one may still wait for a board that is gone)."""
        self.inner.pool.shutdown()
