"""Jobs spread over every board under a key, surviving boards that die."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tvm_intq.errors import IntqError
from tvm_intq.targets.rpc.board_session import Board
from tvm_intq.targets.rpc.protocol import BoardLost, error_line
from tvm_intq.targets.rpc.tracker import TrackerClient


@dataclass
class Job:
    """One unit of remote work: ``fn(board) -> dict`` on a session of its own."""

    name: str
    fn: Callable[[Board], dict]


@dataclass
class JobsOutcome:
    results: dict = field(default_factory=dict)  # job name -> fn's dict + "board"
    lost: list = field(default_factory=list)  # "addr: reason" of boards that died
    error: str | None = None  # why the run stopped, if it did
    boards: int = 0  # boards used in parallel


class RunStopped(IntqError):
    """The jobs could not all finish; ``outcome`` keeps every result measured so far."""

    def __init__(self, message: str, outcome: JobsOutcome):
        super().__init__(message)
        self.outcome = outcome


def run_on_boards(
    tracker: TrackerClient,
    key: str,
    jobs: list[Job],
    *,
    timeout: float = 120.0,
    session_timeout: float = 600.0,
    max_attempts: int = 3,
    on_event: Callable[[str], None] | None = None,
) -> JobsOutcome:
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
                say(
                    f"{job.name}: running on board {board.addr}"
                    + (f" (attempt {attempt})" if attempt > 1 else "")
                )
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
                    fail(
                        f"every board under key '{key}' is gone ({err}); "
                        f"finished: {', '.join(outcome.results) or 'nothing'}"
                    )
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

    threads = [
        threading.Thread(target=worker, name=f"board-worker-{i}", daemon=True)
        for i in range(outcome.boards)
    ]
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
