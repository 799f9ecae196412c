"""``tune --minutes N``: a wall-clock budget, spent on the kernels where the model's time is.

    shares = each kernel as compile builds it now (the database's best record, else the
             default schedule), timed once in the whole-model library: seconds x calls
    until the budget is spent:
        the kernel with the largest share (halved for each chunk that did not improve it)
        gets a chunk of trials (its first candidates, then MetaSchedule's search)
        its share becomes its best record's seconds x calls

The shares are measured, not FLOP estimates: a packing or lookup kernel with no FLOPs can
take more of a call than a conv (light_resnet50's packing kernels before tuning). The
library is built once and each kernel timed with ``time_evaluator`` on inputs of
:func:`~.workers.candidate_input` values (seconds per kernel for light_resnet50's 68).

The time already spent on the model's kernels is kept in the database folder
(``minutes.json``, keyed by the set of the model's workloads): a tune interrupted (Ctrl-C, or
killed) and run again with the same ``--minutes`` spends only what is left, and records are
appended as they arrive, as with ``--trials``. A larger ``--minutes`` continues.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms

from tvm_intq.schedules import database as D
from tvm_intq.schedules.tune.workers import candidate_input

MINUTES = "minutes.json"
#: Trials per chunk of a kernel's search (one or two batches: the search's setup, a few
#: seconds, is paid per chunk).
CHUNK = 16
#: A kernel whose chunk did not improve it has its share multiplied by this for the next pick.
NO_GAIN = 0.5


@dataclass
class Share:
    """One task's measured time per model call: ``seconds`` per call of its kernel as compile
    builds it now, times ``weight`` calls."""

    seconds: float
    weight: int
    penalty: float = 1.0
    exhausted: bool = False

    @property
    def per_call(self) -> float:
        return self.seconds * self.weight

    @property
    def priority(self) -> float:
        return 0.0 if self.exhausted else self.per_call * self.penalty


def kernel_seconds(
    mod: tvm.IRModule, spec, tasks, database=None, threads: int | None = None
) -> dict[str, float]:
    """``{task name: seconds}``: each task's kernel in the library ``compile`` builds from
    ``mod`` with ``database`` (default schedules where it has no record), timed on this
    machine with ``threads`` threads (None: TVM's default)."""
    from tvm_intq.schedules.pipeline import build_pipeline

    target = spec.target()
    ex = tvm.compile(mod, target, relax_pipeline=build_pipeline(spec.int8_dot, database))
    lib = ex.mod.imports[0]
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    old = os.environ.get("TVM_NUM_THREADS")
    if threads is not None:
        os.environ["TVM_NUM_THREADS"] = str(threads)  # read at every parallel launch
    try:
        out = {}
        for t in tasks:
            if not lib.implements_function(t.name):
                continue
            args = [
                tvm.runtime.tensor(candidate_input(a.shape, a.dtype, rng), dev)
                for a in ms.arg_info.ArgInfo.from_prim_func(t.mod["main"])
            ]
            timer = lib.time_evaluator(t.name, dev, number=1, repeat=3, min_repeat_ms=10)
            out[t.name] = float(np.median(timer(*args).results))
        return out
    finally:
        if threads is not None:
            if old is None:
                os.environ.pop("TVM_NUM_THREADS", None)
            else:
                os.environ["TVM_NUM_THREADS"] = old


def job_key(tasks) -> str:
    """The model's kernels as one key (the budget spent belongs to this set of workloads)."""
    return D.workload_key(tvm.IRModule({t.name: t.mod["main"] for t in tasks}))


def spent_seconds(folder, key: str) -> float:
    path = Path(folder) / MINUTES
    return float(json.loads(path.read_text()).get(key, 0.0)) if path.is_file() else 0.0


def note_spent(folder, key: str, seconds: float) -> None:
    path = Path(folder) / MINUTES
    notes = json.loads(path.read_text()) if path.is_file() else {}
    notes[key] = seconds
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(notes, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def pick(shares: dict[str, Share]) -> str | None:
    """The task to tune next: the largest priority (None when every task is exhausted)."""
    best = max(shares, key=lambda n: shares[n].priority, default=None)
    return best if best is not None and shares[best].priority > 0 else None


def share_lines(shares: dict[str, Share], top: int = 5) -> list[str]:
    """The heaviest kernels and their share of the kernels' time per call."""
    total = sum(s.per_call for s in shares.values()) or 1.0
    order = sorted(shares, key=lambda n: -shares[n].per_call)
    lines = [f"kernels take {total * 1e3:.3f} ms per call; the heaviest:"]
    for n in order[:top]:
        s = shares[n]
        lines.append(
            f"  {n[:60]:60s} x{s.weight}  {s.seconds * 1e6:9.1f} us  "
            f"{100 * s.per_call / total:5.1f} %"
        )
    return lines
