"""The first candidates of a task, measured before the search: what compiling without a
record builds. The database then never holds only worse kernels than compiling without it
(light_resnet50's packing kernels: MetaSchedule's 8 candidates were up to 25x slower than
LLVM's vectorized plain loops), and the search starts from them."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from tvm_intq.schedules.default_schedule import (
    apply_default,
    elementwise_default,
    has_default,
    injective_candidates,
)
from tvm_intq.schedules.tune.search import kernel_hash
from tvm_intq.schedules.tune.workers import INVALID_SECONDS, recorded_seconds


def plain_trace(sch: s_tir.Schedule) -> None:
    """Give the unscheduled kernel's trace one instruction that changes nothing: MetaSchedule
    never returns a record whose trace is empty (``TuningRecord::IsValid``), so the plain
    kernel's record would be invisible to ``compile`` and the search, however fast it ran."""
    sch.get_sblock("root", func_name="main")


def first_candidates(task, intrin, target=None) -> list[s_tir.Schedule]:
    """The fixed schedule of :mod:`..default_schedule` for a packed or depthwise conv; for any
    other kernel, :func:`..default_schedule.elementwise_default`'s schedule where compile
    applies one, the kernel as legalized (no schedule) and its
    :func:`..default_schedule.injective_candidates`. The first is what compile builds for
    ``target`` (the schedule asks the target what it has: table permutes)."""
    with target if target is not None else contextlib.nullcontext():
        return _first_candidates(task, intrin)


def _first_candidates(task, intrin) -> list[s_tir.Schedule]:
    if intrin is not None and has_default(task.mod["main"]):
        sch = s_tir.Schedule(task.mod)
        try:
            apply_default(sch, intrin)
        except (RuntimeError, ValueError):
            return []
        return [sch]
    plain = s_tir.Schedule(task.mod)
    plain_trace(plain)
    lanes = 16 if intrin is None else intrin.lanes
    candidates = [plain] + injective_candidates(task.mod, lanes)
    # What compile builds. Without it, a 2-minute tune of PP-OCRv4 det recorded the plain
    # loop nest of a fused resize kernel (the only candidate it measured): serial, it made the
    # tuned library slower than the untuned one (2 threads: 23.2 against 14.9 ms).
    default = None if intrin is None else elementwise_default(task.mod, intrin)
    if default is not None:
        candidates.insert(0, default)
    return candidates


def measure_first_candidates(session, task, measured: set, budget: int) -> tuple:
    """Measure and record up to ``budget`` of :func:`first_candidates` (the kernel's trials
    left), skipping kernels already ``measured``. Returns ``(best, default)``: the best of
    their seconds, and the seconds of the first (what compile builds without a record) if it
    was measured now (each None if not measured, or failed)."""
    best = default = None
    for n, sch in enumerate(first_candidates(task, session.intrin, session.target)):
        if budget <= 0 or session.stop.requested:
            break
        key = kernel_hash(sch.mod)
        if key in measured:
            continue
        budget -= 1
        measured.add(key)
        secs = _measure(session, task, sch)
        if secs is None:  # no board, or its worker died of the Ctrl-C: measure it next time
            measured.discard(key)
        elif secs < INVALID_SECONDS:
            default = secs if n == 0 else default
            best = secs if best is None else min(best, secs)
    return best, default


def _measure(session, task, sch) -> float | None:
    """Build, run and record one schedule of ``task``: its mean seconds (MetaSchedule's 1e10
    when it failed; None when it was not measured or the tune stopped: nothing recorded)."""
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
    (built,) = session.builder.build([ms.builder.BuilderInput(sch.mod, session.target)])
    secs = [1e10]
    if built.error_msg is None:
        device = "cpu" if session.target.kind.name == "llvm" else session.target.kind.name
        (future,) = session.runner.run(
            [ms.runner.RunnerInput(built.artifact_path, device, args_info)]
        )
        secs = recorded_seconds(future.result())
        shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)
    if secs is None or session.stop.discard:
        return None
    db = session.db
    db.commit_tuning_record(
        ms.database.TuningRecord(
            sch.trace, db.commit_workload(task.mod), secs, session.target, args_info
        )
    )
    return sum(secs) / len(secs)
