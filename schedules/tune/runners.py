"""Measuring tuning candidates for a board: MetaSchedule runners (``tvm-intq tune --key``).

    candidate kernel --(host: LocalBuilder, cross-linked .so, tune.export_kernel)--> artifact
    artifact --BoardsRunner--> wall time on the boards under a tracker key   (--cost time)
    artifact --CostRunner---> a deterministic cost on an emulated board  (--cost instructions|mca)

:class:`BoardsRunner` is MetaSchedule's RPCRunner (one worker per board registered when the
tune starts, so every board under the key measures) with what a long tune on real boards needs:

* sessions come from :meth:`TrackerClient.request`, whose wait for a free board has a limit
  (RPCRunner's own request waits forever when no board is left);
* a board that dies takes the candidates it was running with it: those results come back
  marked :data:`~.workers.NOT_MEASURED` (not recorded; a resumed tune measures them again)
  and the next batches go to the boards still registered;
* with no board left (or no tracker) the runner says why in :attr:`BoardsRunner.stop_reason`
  and the tune stops with that line; the database keeps every record measured so far.

:class:`CostRunner` is for emulated boards, whose wall time ranks nothing (qemu runs vector
code slower than scalar code): a candidate's cost is what a counting run of it on the emulated
board says, either the instructions one warm call executes (QEMU plugin,
:func:`~tvm_intq.targets.insn_count.executed_instructions`) or llvm-mca's estimated cycles of
one call on a named core (:func:`~tvm_intq.targets.mca.mca_cycles`). Both are the same number
every run. MetaSchedule ranks candidates by seconds, so a cost ``n`` is recorded as ``n`` ns
(one instruction or cycle per ns, a 1 GHz clock): such a database holds costs, not times, and
records which cost it holds (:func:`~.database.check_cost`).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import (
    EvaluatorConfig,
    PyRunner,
    PyRunnerFuture,
    RPCRunner,
    RunnerResult,
)

from tvm_intq.errors import IntqError
from tvm_intq.schedules.tune.workers import (
    NOT_MEASURED,
    candidate_input,
    ignore_sigint,
    local_arguments,
)
from tvm_intq.targets.insn_count import counting_tools, executed_instructions
from tvm_intq.targets.mca import CORES, COSTS, architecture, llvm_tools, mca_cycles
from tvm_intq.targets.rpc import TrackerClient, rpc_config


def _board_session(tracker: str, key: str, wait: float, session_timeout: float, _config):
    """RPCRunner's ``f_create_session`` (runs in its worker processes)."""
    return (
        TrackerClient(tracker).request(key, timeout=wait, session_timeout=session_timeout).session
    )


def _alloc_arguments(session, device, args_info, alloc_repeat):
    """RPCRunner's ``f_alloc_argument``: inputs drawn on the host and copied to the board.
    TVM's default asks the board for ``tvm.contrib.random``, which a runtime built without
    USE_RANDOM (ours under qemu among them) does not have."""
    return local_arguments(device, args_info, alloc_repeat)


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
        return RunnerResult(
            None,
            f"{NOT_MEASURED}board lost during the run "
            f"({left} left under '{self.runner.key}'): "
            f"{str(res.error_msg).strip().splitlines()[-1]}",
        )


@derived_object
class BoardsRunner(PyRunner):
    """MetaSchedule runner over every board under ``key`` at ``tracker`` (module docstring).

    ``wait``: seconds a candidate may wait for a free board; ``session_timeout``: seconds one
    candidate's session may last (upload, load, timing). Call :meth:`shutdown` when done.
    """

    def __init__(
        self,
        tracker: str,
        key: str,
        *,
        wait: float = 120.0,
        session_timeout: float = 120.0,
        number: int = 3,
        repeat: int = 1,
        min_repeat_ms: int = 0,
    ):
        self.client, self.key = TrackerClient(tracker), key
        boards = self.client.require_boards(key)  # no tracker / no board: one line, now
        self.inner = RPCRunner(
            rpc_config=rpc_config(tracker, key, session_timeout),
            evaluator_config=EvaluatorConfig(
                number=number,
                repeat=repeat,
                min_repeat_ms=min_repeat_ms,
                enable_cpu_cache_flush=False,
            ),
            f_create_session=functools.partial(_board_session, tracker, key, wait, session_timeout),
            f_alloc_argument=_alloc_arguments,
            f_cleanup=_cleanup,
            max_workers=boards,
            initializer=ignore_sigint,
        )
        #: Why no candidate can be measured any more (None while boards remain).
        self.stop_reason: str | None = None

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
            self.stop_reason = why
            return [_Unmeasured(why) for _ in runner_inputs]
        return [_Watched(f, self, boards) for f in self.inner.run(runner_inputs)]

    def shutdown(self) -> None:
        """End the measuring workers (one may still wait for a board that is gone)."""
        self.inner.pool.shutdown()


@derived_object
class _Costed(PyRunnerFuture):
    def __init__(self, future):
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> RunnerResult:
        try:
            return RunnerResult([self.future.result() * 1e-9], None)
        except IntqError as err:  # the candidate failed on the board (crash, wrong output size)
            return RunnerResult(None, str(err))


@derived_object
class CostRunner(PyRunner):
    """MetaSchedule runner for an emulated ``board`` (a BoardSpec) by a deterministic ``cost``:
    ``"instructions"`` or ``"mca"`` (llvm-mca cycles on ``core``). See the module docstring."""

    COSTS = COSTS
    stop_reason = None  # a counting run never loses its board

    def __init__(self, board, cost: str, core: str | None = None, max_workers: int = 1):
        if cost not in self.COSTS:
            raise IntqError(f"unknown cost {cost!r}: one of {', '.join(self.COSTS)} (or time)")
        if not board.emulated:
            raise IntqError(
                f"--cost {cost} counts on an emulated board; '{board.name}' is a real "
                "one: tune it by time (--cost time)"
            )
        counting_tools(board)  # built? (one line naming `make boards` otherwise)
        if cost == "mca":
            llvm_tools()
            cores = CORES[architecture(board)]
            core = core or cores[-1]
            if core not in cores:
                raise IntqError(
                    f"--core {core}: llvm-mca cores for {board.name} are {', '.join(cores)}"
                )
        self.board, self.cost, self.core = board, cost, core
        self.pool = ThreadPoolExecutor(max_workers)

    @property
    def label(self) -> str:
        """What the database's numbers are."""
        what = f"llvm-mca cycles on {self.core}" if self.cost == "mca" else "instructions executed"
        return f"{what} on emulated board {self.board.name} (recorded as ns at 1 GHz)"

    def _cost(self, artifact: str, args_info) -> float:
        rng = np.random.default_rng(0)
        args = [
            candidate_input(shape, dtype, rng)
            for _, dtype, shape in (a.as_json() for a in args_info)
        ]
        if self.cost == "instructions":
            return float(executed_instructions(artifact, self.board, args))
        return float(sum(mca_cycles(artifact, self.board, args, self.core).values()))

    def run(self, runner_inputs):
        return [
            _Costed(self.pool.submit(self._cost, str(r.artifact_path), r.args_info))
            for r in runner_inputs
        ]

    def shutdown(self) -> None:
        self.pool.shutdown(cancel_futures=True)
