"""Tune a model's kernels with MetaSchedule, task by task, into a resumable JSON database.

    tasks = the kernels the build compiles (tuning_pipeline), heaviest first (FLOPs x calls)
    for each task with fewer than `trials` records in the database:
        its first candidates (what compiling without a record builds) are measured;
        MetaSchedule (evolutionary search, XGBoost cost model) measures the missing trials;
        every measured candidate is appended to the database file as it arrives

Resuming (same command after Ctrl-C or a kill) relies on three things, because MetaSchedule
alone would redo work: its evolutionary search seeds each round with the database's best
records but remembers as "measured" only what *this* run measured, so a restarted search
can send a candidate that is already in the database to be measured again, and its cost model
starts untrained. Here

* a task whose records reach the budget (or whose search already ended with this budget,
  noted in ``tasks.json``) is skipped;
* :class:`~.search.SkipMeasured` wraps the search strategy and drops every candidate whose
  scheduled kernel is structurally equal to one a record of the database already holds;
* the cost model is trained on the task's existing records before the search starts.

Ctrl-C stops the tune after the batch being measured (which is not recorded: the terminal
sends the signal to the build/run workers too); a second Ctrl-C exits at once. A runner that
cannot measure any more (no board left) stops it the same way. A SIGKILL loses at most the
batch in flight and possibly a half-written last line, which
:func:`~..database.open_database` drops.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tqdm import tqdm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule import _ffi_api as ms_ffi
from tvm.s_tir.meta_schedule.logging import get_logging_func

from tvm_intq.errors import IntqError
from tvm_intq.schedules import database as D
from tvm_intq.schedules.pipeline import dot_product_for
from tvm_intq.schedules.space import design_space
from tvm_intq.schedules.tune.first_candidates import measure_first_candidates
from tvm_intq.schedules.tune.search import (
    CommitRecords,
    Progress,
    SkipMeasured,
    evolutionary,
    measured_kernels,
)
from tvm_intq.schedules.tune.workers import (
    build_kernel,
    export_kernel,
    ignore_sigint,
    local_arguments,
    measuring_worker,
)


class StopToken:
    """Whether the tune must end after the batch in flight, and why: a Ctrl-C
    (:meth:`interrupt`), the runner's ``stop_reason`` (it cannot measure any more), or the
    ``deadline`` of ``--minutes`` (a ``time.monotonic()`` value) passed. The batch in flight
    is recorded after a deadline, not after the other two (:attr:`discard`)."""

    def __init__(self, runner=None, deadline: float | None = None):
        self.runner = runner
        self.interrupted = False
        self.deadline = deadline

    def interrupt(self) -> None:
        self.interrupted = True

    @property
    def reason(self) -> str | None:
        return getattr(self.runner, "stop_reason", None)

    @property
    def discard(self) -> bool:
        """The batch in flight is not to be recorded (its workers may have died of the
        Ctrl-C, or its board is gone)."""
        return self.interrupted or self.reason is not None

    @property
    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def requested(self) -> bool:
        return self.discard or self.out_of_time


@dataclass
class TaskResult:
    name: str
    weight: int
    records_before: int
    records_after: int
    best_us: float | None
    status: str  # "tuned", "skipped (already tuned)", "search ended early", "interrupted"
    dropped: int = 0  # candidates the search proposed that the database already held
    default_us: float | None = None  # the kernel compile builds without a record, if measured


@dataclass
class TuneSession:
    """One ``tune``: where records go, what builds and measures candidates, the stop token,
    the progress bar, and the results so far."""

    target: tvm.target.Target
    intrin: object  # the target's DotProduct, or None
    folder: Path
    db: object
    builder: object
    runner: object
    cost_model: object
    trials: int
    per_iter: int
    seed: int | None
    stop: StopToken
    bar: tqdm
    results: list = field(default_factory=list)
    best: float | None = None  # best seconds of the task being tuned (progress bar)
    task_label: str = ""
    started: float | None = None  # --minutes: the bar counts seconds from here, not trials
    measured: int = 0
    on_measured: object = None  # --minutes: notes the time spent (a kill loses little)

    def on_update(self, n: int, best: float | None) -> None:
        if best is not None and (self.best is None or best < self.best):
            self.best = best
        self.measured += n
        if self.on_measured is not None:
            self.on_measured()
        if self.started is None:
            self.bar.update(n)
        else:
            self.tick()
        self._show()

    def tick(self) -> None:
        """--minutes: the bar shows the seconds spent."""
        self.bar.n = min(self.bar.total, int(time.monotonic() - self.started))
        self.bar.refresh()

    def _show(self) -> None:
        best = "-" if self.best is None else f"{self.best * 1e6:.1f} us"
        trials = f", {self.measured} trials" if self.started is not None else ""
        self.bar.set_postfix_str(f"{self.task_label} best {best}{trials}")

    def tune_task(self, i: int, count: int, task, recs: list, trials: int | None = None):
        """Tune task ``i`` of ``count`` up to ``trials`` records (default: the session's;
        ``recs``: its records so far); appends and returns its :class:`TaskResult`."""
        db, target = self.db, self.target
        trials = self.trials if trials is None else trials
        before = len(recs)
        self.best = D.best_seconds(db, task.mod, target)
        name = task.name if len(task.name) <= 40 else task.name[:37] + "..."
        self.task_label = f"task {i}/{count} {name}"
        self._show()
        measured = measured_kernels(recs)
        seconds, default = measure_first_candidates(self, task, measured, trials - before)
        added = len(D.records_of(db, task.mod)) - before
        if added:
            self.on_update(added, seconds)
            recs = D.records_of(db, task.mod)
        remaining = trials - len(recs)
        stats = {"dropped": 0}
        if remaining > 0 and not self.stop.requested:
            self._search(i, task, recs, measured, remaining, stats)
        after = D.records_of(db, task.mod)
        best = _us(D.best_seconds(db, task.mod, target))
        if self.stop.requested and len(after) < trials:  # cut short: not a finished task
            status = "budget spent" if self.stop.out_of_time else "interrupted"
            result = TaskResult(
                task.name, task.weight, before, len(after), best, status, stats["dropped"]
            )
            result.default_us = _us(default)
            self.results.append(result)
            return result
        D.note_task(self.folder, task, trials, len(after))
        if len(after) < trials and self.started is None:
            self.bar.update(trials - len(after))  # the budget this search could not use
        status = "tuned" if len(after) >= trials else "search ended early"
        result = TaskResult(
            task.name, task.weight, before, len(after), best, status, stats["dropped"]
        )
        result.default_us = _us(default)
        self.results.append(result)
        return result

    def _search(self, i: int, task, recs, measured, remaining: int, stats: dict) -> None:
        strategy = SkipMeasured(evolutionary(self.per_iter), self.stop, measured, recs, stats)
        ctx = tune_context(
            task.mod,
            self.target,
            design_space(self.intrin),
            strategy,
            task.name,
            _task_logger(self.folder, task.name),
            -1 if self.seed is None else self.seed + i,
        )
        ms.tune.tune_tasks(
            tasks=[ctx],
            task_weights=[1.0],
            work_dir=str(self.folder),
            max_trials_global=remaining,
            max_trials_per_task=remaining,
            num_trials_per_iter=min(self.per_iter, remaining),
            builder=self.builder,
            runner=self.runner,
            database=self.db,
            cost_model=self.cost_model,
            measure_callbacks=[
                CommitRecords(self.db, task.mod, self.target, self.stop),
                ms.measure_callback.RemoveBuildArtifact(),
                ms.measure_callback.UpdateCostModel(),
                Progress(self.on_update),
            ],
            task_scheduler="round-robin",
        )


def tune(
    mod: tvm.IRModule,
    spec,
    folder,
    trials: int | None = None,
    *,
    minutes: float | None = None,
    trials_per_iter: int | None = None,
    min_repeat_ms: int = 50,
    seed: int | None = None,
    progress: bool = True,
    build_timeout: float = 120.0,
    runner=None,
    threads: int | None = None,
    echo=print,
) -> list[TaskResult]:
    """Tune the kernels of ``mod`` (integer or float Relax module) for the target definition
    ``spec`` in the database folder ``folder`` (created if missing; resumed if it holds
    records). Returns one :class:`TaskResult` per task (per chunk, with ``minutes``).

    ``trials``: measured candidates per kernel, every kernel in turn, heaviest first (by
    FLOPs x calls). ``minutes``: a wall-clock budget spent where the model's time is
    (:mod:`.budget`: measured shares, chunks of trials to the heaviest kernel); ``trials``
    then caps each kernel (default: no cap).

    ``runner`` measures the candidates: None = wall time on this machine (host targets only);
    for a board, a :class:`~.runners.BoardsRunner` (wall time) or :class:`~.runners.CostRunner`
    (a deterministic cost; its ``label`` says which, and the database folder keeps it).
    ``threads``: what the host candidates run with (None: TVM's default, every core).
    Raises :class:`IntqError` when the runner stops the tune (no board left),
    ``KeyboardInterrupt`` after a Ctrl-C; either way the database keeps every record measured
    so far.
    """
    if minutes is None and trials is None:
        raise ValueError("give trials (per kernel) or minutes (in all)")
    if trials is not None and trials < 1:
        raise ValueError("trials must be at least 1")
    if minutes is not None and minutes <= 0:
        raise ValueError("minutes must be positive")
    target = spec.target()
    folder = Path(folder)
    D.check_cost(folder, getattr(runner, "label", D.WALL_TIME))
    db = D.open_database(folder)
    tasks = D.extract_tasks(mod, target, spec.int8_dot)
    tasks.sort(key=lambda t: -_flops(t.mod) * t.weight)
    if runner is None and not spec.is_host:
        raise IntqError(
            f"kernels for target {spec.name!r} run on a board: tune them there "
            "(a BoardsRunner; tvm-intq tune --tracker HOST:PORT --key KEY)"
        )
    setup = functools.partial(
        _session,
        spec,
        folder,
        db,
        runner=runner,
        threads=threads,
        seed=seed,
        build_timeout=build_timeout,
        min_repeat_ms=min_repeat_ms,
        progress=progress,
    )
    if minutes is not None:
        return _tune_minutes(
            mod, spec, folder, db, tasks, minutes, trials, trials_per_iter, setup, echo
        )
    notes = D.read_task_notes(folder)
    results, todo = [], []
    for t in tasks:
        recs = D.records_of(db, t.mod)
        ended = notes.get(D.workload_key(t.mod), {}).get("budget", 0) >= trials
        if len(recs) >= trials or ended:
            best = D.best_seconds(db, t.mod, target)
            results.append(
                TaskResult(
                    t.name, t.weight, len(recs), len(recs), _us(best), "skipped (already tuned)"
                )
            )
        else:
            todo.append((t, recs))
    echo(
        f"{len(tasks)} tasks for {spec.name}: "
        f"{len(results)} already tuned in {folder}, {len(todo)} to tune ({trials} trials each)"
    )
    if not todo:
        return results
    session = setup(
        trials,
        min(trials_per_iter or 32, trials),
        StopToken(runner),
        total=sum(trials - len(r) for _, r in todo),
        unit="trial",
        results=results,
    )
    with _graceful_interrupt(session.stop, echo):
        try:
            for i, (t, recs) in enumerate(todo):
                if session.stop.requested:
                    break
                session.tune_task(len(tasks) - len(todo) + i + 1, len(tasks), t, recs)
        finally:
            session.bar.close()
    _raise_if_stopped(session.stop, folder)
    return results


def _session(
    spec,
    folder,
    db,
    trials,
    per_iter,
    stop,
    *,
    total,
    unit,
    results,
    runner,
    threads,
    seed,
    build_timeout,
    min_repeat_ms,
    progress,
) -> TuneSession:
    """The builder, runner, cost model and progress bar of one tune."""
    target = spec.target()
    intrin = dot_product_for(spec.int8_dot, target)
    # Generous timeouts: a busy 2-core machine takes tens of seconds to start a build worker.
    builder = ms.builder.LocalBuilder(
        max_workers=1,
        timeout_sec=build_timeout,
        f_build=build_kernel,
        initializer=ignore_sigint,
        f_export=None if spec.is_host else functools.partial(export_kernel, spec.name),
    )
    if runner is None:
        runner = ms.runner.LocalRunner(
            timeout_sec=build_timeout,
            f_alloc_argument=local_arguments,
            initializer=functools.partial(measuring_worker, threads),
            evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=min_repeat_ms, enable_cpu_cache_flush=False
            ),
        )
    stop.runner = runner if stop.runner is None else stop.runner
    if intrin is not None and intrin.scalable:
        # PerStoreFeature fails on scalable vector types ("Cannot compute compile-time storage
        # bytes"): the search ranks its proposals at random, the measurements still pick the best.
        cost_model = ms.cost_model.RandomModel()
    else:
        cost_model = ms.cost_model.XGBModel(
            extractor=ms.feature_extractor.PerStoreFeature(),
            adaptive_training=True,
            num_tuning_cores=1,
        )
    bar = tqdm(
        total=total,
        unit=unit,
        desc="tuning",
        disable=not progress,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    return TuneSession(
        target,
        intrin,
        folder,
        db,
        builder,
        runner,
        cost_model,
        trials,
        per_iter,
        seed,
        stop,
        bar,
        results,
    )


def _raise_if_stopped(stop: StopToken, folder) -> None:
    if stop.reason:
        raise IntqError(
            f"{stop.reason}; {folder} keeps every record measured so far, the same command resumes"
        )
    if stop.interrupted:
        raise KeyboardInterrupt


def _tune_minutes(mod, spec, folder, db, tasks, minutes, cap, per_iter, setup, echo):
    """``tune(minutes=...)``: :mod:`.budget`'s loop."""
    from tvm_intq.schedules.tune import budget as B

    target = spec.target()
    key = B.job_key(tasks)
    spent = B.spent_seconds(folder, key)
    left = minutes * 60.0 - spent
    cap = cap or 1 << 30
    if left <= 0:
        echo(f"{len(tasks)} tasks for {spec.name}: {minutes:g} minutes already spent in {folder}")
        return []
    started = time.monotonic()
    stop = StopToken(deadline=started + left)
    if spec.is_host and setup.keywords["runner"] is None:
        # Each kernel as compile builds it now, timed once in the whole library.
        held = db if db.get_all_tuning_records() else None
        seconds = B.kernel_seconds(mod, spec, tasks, held, setup.keywords["threads"])
        how = "measured on this machine"
    else:  # a board: FLOPs stand in until a kernel's first candidates are measured
        seconds = {t.name: max(_flops(t.mod), 1.0) * 1e-9 for t in tasks}
        how = "estimated from FLOPs (a board)"
    notes = D.read_task_notes(folder)
    shares, by_name = {}, {t.name: t for t in tasks}
    for t in tasks:
        recs = D.records_of(db, t.mod)
        ended = notes.get(D.workload_key(t.mod), {}).get("ended", False)
        shares[t.name] = B.Share(seconds.get(t.name, 0.0), t.weight, exhausted=ended)
        shares[t.name].exhausted |= len(recs) >= cap
    echo(
        f"{len(tasks)} tasks for {spec.name}: {left / 60:.1f} of {minutes:g} minutes left "
        f"in {folder}; kernel shares {how}"
    )
    for line in B.share_lines(shares):
        echo(line)
    per_iter = per_iter or B.CHUNK // 2
    session = setup(cap, per_iter, stop, total=int(left), unit="s", results=[])
    session.started = started

    def note():
        B.note_spent(folder, key, spent + time.monotonic() - started)

    session.on_measured = note
    note()  # the shares' measurement counts too
    index = {t.name: i + 1 for i, t in enumerate(tasks)}
    try:
        with _graceful_interrupt(session.stop, echo):
            while not session.stop.requested:
                name = B.pick(shares)
                if name is None:
                    echo("every kernel's search has ended")
                    break
                t, share = by_name[name], shares[name]
                recs = D.records_of(db, t.mod)
                before = D.best_seconds(db, t.mod, target)
                result = session.tune_task(
                    index[name], len(tasks), t, recs, min(cap, len(recs) + _chunk(session))
                )
                after = D.best_seconds(db, t.mod, target)
                if result.status == "search ended early":
                    _mark_ended(folder, D.workload_key(t.mod))
                share.exhausted |= result.status == "search ended early"
                share.exhausted |= result.records_after >= cap
                # The share scales by the gain the runner measured (its seconds and
                # time_evaluator's in the whole library differ for small kernels).
                baseline = before
                if baseline is None and result.default_us is not None:
                    baseline = result.default_us * 1e-6
                if after is not None and baseline and after < 0.97 * baseline:
                    share.seconds *= after / baseline
                    share.penalty = 1.0
                else:
                    share.penalty *= B.NO_GAIN
                note()
                session.tick()
    finally:
        note()
        session.bar.close()
    _raise_if_stopped(session.stop, folder)
    echo(
        f"spent {(time.monotonic() - started) / 60:.1f} minutes ({session.measured} trials); "
        "kernel shares now:"
    )
    for line in B.share_lines(shares):
        echo(line)
    merged: dict[str, TaskResult] = {}  # one per task: its chunks as one
    for r in session.results:
        first = merged.get(r.name)
        if first is not None:
            r = TaskResult(
                r.name,
                r.weight,
                first.records_before,
                r.records_after,
                r.best_us,
                r.status,
                first.dropped + r.dropped,
            )
        merged[r.name] = r
    return list(merged.values())


def _chunk(session: TuneSession) -> int:
    """Trials for the next chunk: :data:`.budget.CHUNK`, fewer when the time left holds
    fewer at the pace so far (a batch is measured whole, the deadline is only checked between
    batches: this keeps the overrun near one trial's time)."""
    from tvm_intq.schedules.tune.budget import CHUNK

    if not session.measured or session.stop.deadline is None:
        return CHUNK
    pace = (time.monotonic() - session.started) / session.measured  # seconds per trial
    left = session.stop.deadline - time.monotonic()
    return max(1, min(CHUNK, int(left / pace)))


def _mark_ended(folder, key: str) -> None:
    """``tasks.json``: this kernel's search has nothing new to measure (``--minutes`` does not
    pick it again)."""
    import json

    path = Path(folder) / D.TASKS
    notes = D.read_task_notes(folder)
    notes.setdefault(key, {})["ended"] = True
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(notes, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def tune_context(mod, target, space, strategy, name: str, logger, rand_state: int):
    """``ms.TuneContext(...)`` without the ``import tvm.s_tir.tensor_intrin`` its constructor
    starts with: that import parses every tensor intrinsic of every backend (CUDA's alone took
    ~55 s on the busy 2-core machine) and we need none of them (ours are registered by
    :func:`..intrinsics.register`). The rest is what the constructor does."""
    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(
        ms_ffi.TuneContext,
        mod,
        target,
        space,
        strategy,
        name,
        1,
        rand_state,
        get_logging_func(logger),
    )
    ms_ffi.TuneContextInitialize(ctx)
    return ctx


@contextmanager
def _graceful_interrupt(stop: StopToken, echo):
    """First Ctrl-C: stop when the batch being measured returns (not recording it: its workers
    may have died of the same signal). Second: exit now.

    (MetaSchedule's task scheduler catches a KeyboardInterrupt raised inside its Python
    callbacks and just ends the current task, so the default handler would need one Ctrl-C
    per task.)"""

    def handler(signum, frame):
        if stop.interrupted:
            os._exit(130)  # the records on disk are complete lines; the next tune resumes
        stop.interrupt()
        echo(
            "\ninterrupted: stopping after the batch being measured, which is not recorded "
            "(Ctrl-C again to quit now)"
        )

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _task_logger(folder: Path, task: str) -> logging.Logger:
    """The logger of one task's search, writing everything to ``folder/logs/<task>.log``; the
    console gets MetaSchedule's warnings only.

    (Not MetaSchedule's ``get_loggers_from_work_dir``: it re-runs ``logging.config.dictConfig``
    over the whole process on every call, replacing the caller's logging setup, and fails on a
    handler without a name, which pytest's log capture attaches.)"""
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    logger = logging.getLogger(f"tvm_intq.tune.{task}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    path = (folder / "logs" / f"{task}.log").resolve()
    if not any(getattr(h, "baseFilename", None) == str(path) for h in logger.handlers):
        for h in list(logger.handlers):  # a log of the same task in another database folder
            logger.removeHandler(h)
            h.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))
        logger.addHandler(handler)
    return logger


def _flops(mod) -> float:
    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001
        return 0.0


def _us(seconds):
    return None if seconds is None else seconds * 1e6


def summary(results: list[TaskResult]) -> list[str]:
    """One line per task, for the CLI."""
    lines = []
    for r in results:
        best = (
            "no valid record"
            if r.best_us is None or not math.isfinite(r.best_us)
            else f"{r.best_us:9.1f} us"
        )
        resumed = (
            f", resumed from {r.records_before}"
            if r.records_before and r.status != "skipped (already tuned)"
            else ""
        )
        dropped = f", {r.dropped} already-measured candidates not re-measured" if r.dropped else ""
        lines.append(
            f"  {r.name[:60]:60s} x{r.weight}  {r.records_after:4d} records  {best}  "
            f"{r.status}{resumed}{dropped}"
        )
    return lines
