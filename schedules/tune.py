"""Tune a model's kernels with MetaSchedule, task by task, into a resumable JSON database.

    tasks = the kernels the build compiles (tuning_pipeline), heaviest first (FLOPs x calls)
    for each task with fewer than `trials` records in the database:
        MetaSchedule (evolutionary search, XGBoost cost model) measures the missing trials;
        every measured candidate is appended to the database file as it arrives

Resuming (same command after Ctrl-C or a kill) relies on three things, because MetaSchedule
alone would redo work: its evolutionary search seeds each round with the database's best
records but remembers as "measured" only what *this* run measured, so a restarted search
can send a candidate that is already in the database to be measured again, and its cost model
starts untrained. Here

* a task whose records reach the budget (or whose search already ended with this budget,
  noted in ``tasks.json``) is skipped;
* :class:`SkipMeasured` wraps the search strategy and drops every candidate whose scheduled
  kernel is structurally equal to one a record of the database already holds;
* the cost model is trained on the task's existing records before the search starts.

Ctrl-C stops the tune after the batch being measured (which is not recorded: the terminal
sends the signal to the build/run workers too); a second Ctrl-C exits at once. A SIGKILL
loses at most the batch in flight and possibly a half-written last line, which
:func:`~.database.open_database` drops.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

from ..errors import IntqError
from . import database as D
from .default_schedule import apply_default, has_default, injective_candidates
from .pipeline import dot_product_for
from .space import design_space

log = logging.getLogger(__name__)
INVALID_SECONDS = 1e9  # MetaSchedule stores failed candidates with run_secs 1e10
_STOP = {"requested": False, "reason": None}  # set by the first Ctrl-C of a tune, or stop()
#: Start of the error message of a runner result that is no measurement (its board was lost):
#: it is not recorded, and a resumed tune measures that candidate again.
NOT_MEASURED = "not measured: "


def stop(reason: str) -> None:
    """End the tune after the batch in flight, which is not recorded (a runner calls this when
    it cannot measure any more, e.g. no board is left); :func:`tune` raises
    :class:`~tvm_intq.errors.IntqError` with ``reason``."""
    _STOP.update(requested=True, reason=reason)


def _ignore_sigint() -> None:
    """Build/run worker initializer: a Ctrl-C in the terminal reaches the whole process group,
    and a running worker should finish its job rather than die with a traceback (one still
    starting up can die anyway: that batch is not recorded, see :class:`CommitRecords`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _measuring_worker(threads: int | None) -> None:
    """Run worker initializer: :func:`_ignore_sigint`, and the thread count candidates run
    with (TVM reads ``TVM_NUM_THREADS`` when the worker's thread pool starts)."""
    _ignore_sigint()
    if threads is not None:
        os.environ["TVM_NUM_THREADS"] = str(threads)


@contextmanager
def _graceful_interrupt(echo):
    """First Ctrl-C: stop when the batch being measured returns (not recording it: its workers
    may have died of the same signal). Second: exit now.

    (MetaSchedule's task scheduler catches a KeyboardInterrupt raised inside its Python
    callbacks and just ends the current task, so the default handler would need one Ctrl-C
    per task.)"""
    _STOP.update(requested=False, reason=None)

    def handler(signum, frame):
        if _STOP["requested"]:
            os._exit(130)  # the records on disk are complete lines; the next tune resumes
        _STOP["requested"] = True
        echo("\ninterrupted: stopping after the batch being measured, which is not recorded "
             "(Ctrl-C again to quit now)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _mod_hash(mod: tvm.IRModule) -> int:
    return tvm_ffi.structural_hash(mod)


def _plain_trace(sch: s_tir.Schedule) -> None:
    """Give the unscheduled kernel's trace one instruction that changes nothing: MetaSchedule
    never returns a record whose trace is empty (``TuningRecord::IsValid``), so the plain
    kernel's record would be invisible to ``compile`` and the search, however fast it ran."""
    sch.get_sblock("root", func_name="main")


def measured_kernels(records) -> set[int]:
    """Structural hashes of the kernels the records hold (their traces replayed). A record with
    an empty trace (made before :func:`_plain_trace`) counts as not measured: it is never used."""
    out = set()
    for r in records:
        if not r.trace.insts:
            continue
        try:
            sch = s_tir.Schedule(r.workload.mod)
            r.trace.apply_to_schedule(sch, remove_postproc=False)
            out.add(_mod_hash(sch.mod))
        except Exception:  # noqa: BLE001  a record TVM can no longer replay is just not skipped
            continue
    return out


@derived_object
class SkipMeasured(PySearchStrategy):
    """A search strategy that never sends a kernel the database already measured.

    Wraps MetaSchedule's evolutionary search; before the search, trains the cost model on the
    task's existing ``records`` (a resumed tune continues from what it learned).
    """

    def __init__(self, inner=None, measured=(), records=(), stats=None):
        self.inner = inner if inner is not None else ms.search_strategy.EvolutionarySearch()
        self.measured = set(measured)
        self.records = list(records)
        self.context = None
        self.stats = stats if stats is not None else {"dropped": 0}  # shared with clones

    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None,
                   cost_model=None) -> None:
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)
        if cost_model is not None and self.records:
            cands, results = [], []
            for r in self.records:
                try:
                    cands.append(r.as_measure_candidate())
                except Exception:  # noqa: BLE001
                    continue
                results.append(ms.runner.RunnerResult([float(s) for s in r.run_secs], None))
            if cands:
                cost_model.update(self.context, cands, results)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        # The inner search never proposes the same kernel twice in one run, so only database
        # kernels are dropped here; a few rounds of only-known kernels end the search.
        for _ in range(8):
            if _STOP["requested"]:
                return None
            cands = self.inner.generate_measure_candidates()
            if cands is None:
                return None
            fresh = [c for c in cands if _mod_hash(c.sch.mod) not in self.measured]
            self.stats["dropped"] += len(cands) - len(fresh)
            if fresh or not cands:
                for c in fresh:
                    self.measured.add(_mod_hash(c.sch.mod))
                return fresh if fresh else None
        return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return SkipMeasured(self.inner.clone(), self.measured, self.records, self.stats)


@derived_object
class Progress(PyMeasureCallback):
    """Counts measured trials and keeps the best latency of the current task."""

    def __init__(self, on_update):
        self.on_update = on_update

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        secs = []
        for res in runner_results:
            if res.run_secs is not None and res.error_msg is None:
                s = [float(x) for x in res.run_secs]
                if s and max(s) < INVALID_SECONDS:
                    secs.append(sum(s) / len(s))
        self.on_update(len(runner_results), min(secs) if secs else None)


@derived_object
class CommitRecords(PyMeasureCallback):
    """MetaSchedule's AddToDatabase, except after a Ctrl-C (that batch's build and run workers
    got the signal too, so its results may be spurious failures) and for results that are no
    measurement (:data:`NOT_MEASURED`): neither is recorded."""

    def __init__(self, database, mod, target):
        self.database, self.mod, self.target = database, mod, target

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if _STOP["requested"]:
            return
        workload = self.database.commit_workload(self.mod)
        for cand, res in zip(measure_candidates, runner_results):
            secs = recorded_seconds(res)
            if secs is not None:
                self.database.commit_tuning_record(ms.database.TuningRecord(
                    cand.sch.trace, workload, secs, self.target, cand.args_info))


def recorded_seconds(result) -> list[float] | None:
    """What a runner result records: its seconds, MetaSchedule's 1e10 for a candidate that
    failed, None for no measurement (:data:`NOT_MEASURED`)."""
    if result.error_msg is not None and str(result.error_msg).startswith(NOT_MEASURED):
        return None
    if result.error_msg is None and result.run_secs:
        return [float(x) for x in result.run_secs]
    return [1e10]


@dataclass
class TaskResult:
    name: str
    weight: int
    records_before: int
    records_after: int
    best_us: float | None
    status: str  # "tuned", "skipped (already tuned)", "search ended early"
    dropped: int = 0  # candidates the search proposed that the database already held


def _flops(mod) -> float:
    try:
        return float(tvm.s_tir.analysis.estimate_tir_flops(mod))
    except Exception:  # noqa: BLE001
        return 0.0


def tune(mod: tvm.IRModule, spec, folder, trials: int, *, trials_per_iter: int | None = None,
         min_repeat_ms: int = 50, seed: int | None = None, progress: bool = True,
         build_timeout: float = 120.0, runner=None, threads: int | None = None,
         echo=print) -> list[TaskResult]:
    """Tune every kernel of ``mod`` (integer or float Relax module) for the target definition
    ``spec`` to ``trials`` measured candidates per kernel, in the database folder ``folder``
    (created if missing; resumed if it holds records). Returns one :class:`TaskResult` per task.

    ``runner`` measures the candidates: None = wall time on this machine (host targets only);
    for a board, a :class:`~.runners.BoardsRunner` (wall time) or :class:`~.runners.CostRunner`
    (a deterministic cost; its ``label`` says which, and the database folder keeps it).
    ``threads``: what the host candidates run with (None: TVM's default, every core).
    Raises :class:`IntqError` when the runner stops the tune (:func:`stop`),
    ``KeyboardInterrupt`` after a Ctrl-C; either way the database keeps every record measured
    so far.
    """
    if trials < 1:
        raise ValueError("trials must be at least 1")
    target = spec.target()
    intrin = dot_product_for(spec.int8_dot, target)
    folder = Path(folder)
    D.check_cost(folder, getattr(runner, "label", D.WALL_TIME))
    db = D.open_database(folder)
    tasks = D.extract_tasks(mod, target, spec.int8_dot)
    tasks.sort(key=lambda t: -_flops(t.mod) * t.weight)
    notes = D.read_task_notes(folder)
    results, todo = [], []
    for t in tasks:
        recs = D.records_of(db, t.mod)
        ended = notes.get(D.workload_key(t.mod), {}).get("budget", 0) >= trials
        if len(recs) >= trials or ended:
            best = D.best_seconds(db, t.mod, target)
            results.append(TaskResult(t.name, t.weight, len(recs), len(recs), _us(best),
                                      "skipped (already tuned)"))
        else:
            todo.append((t, recs))
    skipped = len(results)
    echo(f"{len(tasks)} tasks for {spec.name}: "
         f"{skipped} already tuned in {folder}, {len(todo)} to tune ({trials} trials each)")
    if not todo:
        return results

    if runner is None and not spec.is_host:
        raise IntqError(f"kernels for target {spec.name!r} run on a board: tune them there "
                        "(a BoardsRunner; tvm-intq tune --tracker HOST:PORT --key KEY)")
    # Generous timeouts: a busy 2-core machine takes tens of seconds to start a build worker.
    builder = ms.builder.LocalBuilder(max_workers=1, timeout_sec=build_timeout,
                                      f_build=build_kernel, initializer=_ignore_sigint,
                                      f_export=None if spec.is_host else
                                      functools.partial(export_kernel, spec.name))
    if runner is None:
        from .runners import local_arguments  # runners imports this module

        runner = ms.runner.LocalRunner(timeout_sec=build_timeout,
                                       f_alloc_argument=local_arguments,
                                       initializer=functools.partial(_measuring_worker, threads),
                                       evaluator_config=ms.runner.EvaluatorConfig(
                                           number=3, repeat=1, min_repeat_ms=min_repeat_ms,
                                           enable_cpu_cache_flush=False))
    if intrin is not None and intrin.scalable:
        # PerStoreFeature fails on scalable vector types ("Cannot compute compile-time storage
        # bytes"): the search ranks its proposals at random, the measurements still pick the best.
        cost_model = ms.cost_model.RandomModel()
    else:
        cost_model = ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                                            adaptive_training=True, num_tuning_cores=1)
    per_iter = min(trials_per_iter or 32, trials)
    total = sum(trials - len(r) for _, r in todo)
    bar = _bar(total, progress)
    state = {"best": None}

    def on_update(n, best):
        if best is not None and (state["best"] is None or best < state["best"]):
            state["best"] = best
        bar.update(n)
        bar.set_postfix_str(_postfix(state))

    with _graceful_interrupt(echo):
        try:
            _tune_tasks(todo, trials, per_iter, skipped, len(tasks), target, intrin, folder, db,
                        builder, runner, cost_model, seed, state, on_update, bar, results)
        finally:
            bar.close()
    if _STOP["reason"]:
        raise IntqError(f"{_STOP['reason']}; {folder} keeps every record measured so far, the "
                        "same command resumes")
    if _STOP["requested"]:
        raise KeyboardInterrupt
    return results


def _tune_tasks(todo, trials, per_iter, skipped, count, target, intrin, folder, db, builder,
                runner, cost_model, seed, state, on_update, bar, results) -> None:
    for i, (t, recs) in enumerate(todo):
        if _STOP["requested"]:
            return
        remaining, before_count = trials - len(recs), len(recs)
        state.update(best=D.best_seconds(db, t.mod, target), task=t.name,
                     index=skipped + i + 1, count=count)
        bar.set_postfix_str(_postfix(state))
        measured = measured_kernels(recs)
        seconds = _measure_default(t, intrin, target, builder, runner, db, measured, remaining)
        added = len(D.records_of(db, t.mod)) - len(recs)
        if added:
            on_update(added, seconds)
            recs = D.records_of(db, t.mod)
            remaining -= added
        if remaining <= 0:
            D.note_task(folder, t, trials, len(recs))
            results.append(TaskResult(t.name, t.weight, before_count, len(recs),
                                      _us(D.best_seconds(db, t.mod, target)), "tuned"))
            continue
        stats = {"dropped": 0}
        strategy = SkipMeasured(_evolutionary(per_iter), measured, recs, stats)
        logger = _task_logger(folder, t.name)
        with _only_needed_intrinsics():
            ctx = ms.TuneContext(mod=t.mod, target=target, space_generator=design_space(intrin),
                                 search_strategy=strategy, task_name=t.name, logger=logger,
                                 rand_state=-1 if seed is None else seed + i, num_threads=1)
        ms.tune.tune_tasks(
            tasks=[ctx], task_weights=[1.0], work_dir=str(folder),
            max_trials_global=remaining, max_trials_per_task=remaining,
            num_trials_per_iter=min(per_iter, remaining),
            builder=builder, runner=runner, database=db, cost_model=cost_model,
            measure_callbacks=[CommitRecords(db, t.mod, target),
                               ms.measure_callback.RemoveBuildArtifact(),
                               ms.measure_callback.UpdateCostModel(), Progress(on_update)],
            task_scheduler="round-robin")
        after = D.records_of(db, t.mod)
        if _STOP["requested"]:  # the search was cut short: not a finished task
            results.append(TaskResult(t.name, t.weight, before_count, len(after),
                                      _us(D.best_seconds(db, t.mod, target)), "interrupted",
                                      stats["dropped"]))
            return
        D.note_task(folder, t, trials, len(after))
        best = D.best_seconds(db, t.mod, target)
        status = "tuned" if len(after) >= trials else "search ended early"
        if len(after) < trials:
            bar.update(trials - len(after))  # the budget this search could not use
        results.append(TaskResult(t.name, t.weight, before_count, len(after), _us(best), status,
                                  stats["dropped"]))


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


def _us(seconds):
    return None if seconds is None else seconds * 1e6


def _measure_default(task, intrin, target, builder, runner, db, measured,
                     budget: int) -> float | None:
    """Measure what compiling without a record builds as the task's first candidates: the
    fixed schedule of :mod:`.default_schedule` for a packed or depthwise conv; for any other
    kernel, the kernel as legalized (no schedule) and its
    :func:`.default_schedule.injective_candidates`.
    The database then never holds only worse kernels than compiling without it
    (light_resnet50's packing kernels: MetaSchedule's 8 candidates were up to 25x slower than
    LLVM's vectorized plain loops), and the search starts from them. At most ``budget`` of
    them are measured (the kernel's trials left), in that order. Returns the best of their
    seconds (None if all are already measured or failed)."""
    if intrin is not None and has_default(task.mod["main"]):
        sch = s_tir.Schedule(task.mod)
        try:
            apply_default(sch, intrin)
        except (RuntimeError, ValueError):
            return None
        candidates = [sch]
    else:
        plain = s_tir.Schedule(task.mod)
        _plain_trace(plain)
        lanes = 16 if intrin is None else intrin.lanes
        candidates = [plain] + injective_candidates(task.mod, lanes)
    best = None
    for sch in candidates:
        if budget <= 0:
            break
        if _mod_hash(sch.mod) in measured:
            continue
        budget -= 1
        secs = _measure_schedule(task, sch, target, builder, runner, db, measured)
        if secs is not None and (best is None or secs < best):
            best = secs
    return best


def _measure_schedule(task, sch, target, builder, runner, db, measured) -> float | None:
    """Build, run and record one schedule of ``task`` unless a kernel like it was measured;
    its mean seconds (None: measured before, failed, or interrupted)."""
    key = _mod_hash(sch.mod)
    if key in measured:
        return None
    measured.add(key)
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    secs = [1e10]
    if built.error_msg is None:
        device = "cpu" if target.kind.name == "llvm" else target.kind.name
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args_info)])
        secs = recorded_seconds(future.result())
        shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)
    if secs is None or _STOP["requested"]:  # no board, or its worker died of the Ctrl-C
        measured.discard(key)
        return None
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(task.mod), secs,
                                                     target, args_info))
    mean = sum(secs) / len(secs)
    return mean if mean < INVALID_SECONDS else None


def export_kernel(target_name: str, rt_mod) -> str:
    """Build-worker export for a board: the kernel linked into a shared library with the
    target's cross compiler (MetaSchedule's default writes a .tar, which a board could only
    load with a compiler of its own)."""
    from tvm_intq.targets import get_target

    path = Path(tempfile.mkdtemp()) / "tvm_tmp_mod.so"
    get_target(target_name).export(rt_mod, path)
    return str(path)


def build_kernel(mod, target, _params):
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin`` (tens of
    seconds per build worker, and a new worker per batch): the candidates arrive tensorized."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


@contextmanager
def _only_needed_intrinsics():
    """Let ``TuneContext()`` skip its ``import tvm.s_tir.tensor_intrin``.

    That import parses every tensor intrinsic of every backend (CUDA's alone took ~55 s on the
    busy 2-core machine) and we need none of them: ours are registered by
    :func:`.intrinsics.register`. While the constructor runs, the package stands in
    ``sys.modules`` un-executed (its submodules still import on demand); afterwards it is
    removed again, so a real import later works as usual.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(name)
    stub = importlib.util.module_from_spec(spec)
    sys.modules[name] = stub
    try:
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]


def _evolutionary(per_iter: int):
    """MetaSchedule's evolutionary search with its population scaled to the batch: the
    default 512 costs minutes of CPU per round, wasted when a round measures a few trials."""
    population = max(64, min(512, 16 * per_iter))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=max(4, min(50, population // 8)))


def _postfix(state) -> str:
    best = state.get("best")
    best_s = "-" if best is None else f"{best * 1e6:.1f} us"
    name = state.get("task", "")
    name = name if len(name) <= 40 else name[:37] + "..."
    return f"task {state.get('index', '?')}/{state.get('count', '?')} {name} best {best_s}"


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="trial", desc="tuning", disable=not enabled, dynamic_ncols=True,
                mininterval=0.5)


def summary(results: list[TaskResult]) -> list[str]:
    """One line per task, for the CLI."""
    lines = []
    for r in results:
        best = "no valid record" if r.best_us is None or not math.isfinite(r.best_us) \
            else f"{r.best_us:9.1f} us"
        resumed = f", resumed from {r.records_before}" if r.records_before and r.status != \
            "skipped (already tuned)" else ""
        dropped = f", {r.dropped} already-measured candidates not re-measured" if r.dropped else ""
        lines.append(f"  {r.name[:60]:60s} x{r.weight}  {r.records_after:4d} records  {best}  "
                     f"{r.status}{resumed}{dropped}")
    return lines
