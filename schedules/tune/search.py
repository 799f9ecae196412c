"""MetaSchedule's search with what a resumable tune needs: candidates the database already
measured are not sent again, the cost model starts from the database's records, and a batch
measured after a stop is not recorded."""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

from tvm_intq.schedules.tune.workers import INVALID_SECONDS, recorded_seconds


def kernel_hash(mod) -> int:
    """The structural hash of a scheduled kernel: equal kernels, equal hashes."""
    return tvm_ffi.structural_hash(mod)


def measured_kernels(records) -> set[int]:
    """Structural hashes of the kernels the records hold (their traces replayed). A record with
    an empty trace (made before ``first_candidates.plain_trace``) counts as not measured: it is
    never used."""
    out = set()
    for r in records:
        if not r.trace.insts:
            continue
        try:
            sch = s_tir.Schedule(r.workload.mod)
            r.trace.apply_to_schedule(sch, remove_postproc=False)
            out.add(kernel_hash(sch.mod))
        except Exception:  # noqa: BLE001  a record TVM can no longer replay is just not skipped
            continue
    return out


def evolutionary(per_iter: int):
    """MetaSchedule's evolutionary search with its population scaled to the batch: the
    default 512 costs minutes of CPU per round, wasted when a round measures a few trials."""
    population = max(64, min(512, 16 * per_iter))
    return ms.search_strategy.EvolutionarySearch(
        population_size=population, init_min_unmeasured=max(4, min(50, population // 8))
    )


@derived_object
class SkipMeasured(PySearchStrategy):
    """A search strategy that never sends a kernel the database already measured.

    Wraps MetaSchedule's evolutionary search; before the search, trains the cost model on the
    task's existing ``records`` (a resumed tune continues from what it learned). Proposes
    nothing once ``stop`` (a :class:`~.session.StopToken`) is set.
    """

    def __init__(self, inner, stop, measured=(), records=(), stats=None):
        self.inner = inner
        self.stop = stop
        self.measured = set(measured)
        self.records = list(records)
        self.context = None
        self.stats = stats if stats is not None else {"dropped": 0}  # shared with clones

    def _initialize_with_tune_context(self, context) -> None:
        self.context = context
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(
        self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None
    ) -> None:
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
            if self.stop.requested:
                return None
            cands = self.inner.generate_measure_candidates()
            if cands is None or self.stop.requested:  # a deadline may pass while it searched
                return None
            fresh = [c for c in cands if kernel_hash(c.sch.mod) not in self.measured]
            self.stats["dropped"] += len(cands) - len(fresh)
            if fresh or not cands:
                for c in fresh:
                    self.measured.add(kernel_hash(c.sch.mod))
                return fresh if fresh else None
        return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self):
        return SkipMeasured(self.inner.clone(), self.stop, self.measured, self.records, self.stats)


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
    """MetaSchedule's AddToDatabase, except after a stop (after a Ctrl-C, that batch's build and
    run workers got the signal too, so its results may be spurious failures) and for results
    that are no measurement (``NOT_MEASURED``): neither is recorded. A batch measured when a
    ``--minutes`` deadline passed is recorded."""

    def __init__(self, database, mod, target, stop):
        self.database, self.mod, self.target, self.stop = database, mod, target, stop

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if self.stop.discard:
            return
        workload = self.database.commit_workload(self.mod)
        for cand, res in zip(measure_candidates, runner_results):
            secs = recorded_seconds(res)
            if secs is not None:
                self.database.commit_tuning_record(
                    ms.database.TuningRecord(
                        cand.sch.trace, workload, secs, self.target, cand.args_info
                    )
                )
