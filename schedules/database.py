"""Tuning databases: where tuned kernels are kept, and which kernels of a model they cover.

A database is a folder holding MetaSchedule's JSON database (``database_workload.json``,
``database_tuning_record.json``; TVM's ``JSONDatabase`` appends each record to the file as it
is committed, one line per record), ``tasks.json``, our note of which tasks a tune finished
and with what budget, and ``cost.txt``, what its records' seconds are (wall time, or a
deterministic cost of an emulated board, see :mod:`.tune.runners`). The shipped databases live
in ``schedules/databases/<target>/<model>/``;
``compile`` uses them for its target when no ``--db`` is given.

A record is keyed by the kernel itself (the fused PrimFunc after :func:`tuning_pipeline`,
compared structurally): per-channel constants are kernel inputs, so a record serves every
calibration of the same layer shapes; kernels that inline a calibration-dependent scalar
(e.g. the multiplier of a requantize fused into a concat) need a record of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from tvm_intq.schedules.intrinsics import register
from tvm_intq.schedules.pipeline import tuning_pipeline

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
TASKS = "tasks.json"
COST = "cost.txt"
#: What a database's seconds are when it says nothing else (all databases before cost.txt).
WALL_TIME = "wall time"
SHIPPED = Path(__file__).resolve().parent / "databases"


@dataclass
class Task:
    """One kernel to tune: its name in the module, its workload, and its weight (how many
    times the model calls it)."""

    name: str
    mod: tvm.IRModule
    weight: int


def _repair(path: Path) -> int:
    """Drop lines that are not complete JSON (a tune killed while writing); returns how many."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    good = []
    for line in lines:
        try:
            json.loads(line)
            good.append(line)
        except json.JSONDecodeError:
            continue
    if len(good) != len(lines) or (lines and not path.read_text().endswith("\n")):
        path.write_text("".join(g + "\n" for g in good))
    return len(lines) - len(good)


def open_database(folder, create: bool = True) -> ms.database.JSONDatabase:
    """The JSON database in ``folder`` (created if missing and ``create``)."""
    folder = Path(folder)
    if not folder.is_dir():
        if not create:
            raise FileNotFoundError(f"{folder}: no tuning database here")
        folder.mkdir(parents=True)
    for name in (WORKLOADS, RECORDS):
        _repair(folder / name)
    register()  # the records' traces name our tensor intrinsics
    try:
        return ms.database.JSONDatabase(
            str(folder / WORKLOADS),
            str(folder / RECORDS),
            allow_missing=True,
            module_equality="structural",
        )
    except RuntimeError as err:  # TVM replays every record's trace when it loads them
        from tvm_intq.errors import IntqError

        if "is not registered" in str(err):
            intrin = str(err).split("TensorIntrin")[-1].split("is not registered")[0].strip(" '")
            why = (
                f"its records use the tensor intrinsic {intrin!r}, which this version of "
                "tvm-intq does not have"
            )
        else:
            why = f"its records do not replay on this version's kernels: {str(err).strip()[:200]}"
        raise IntqError(
            f"{folder}: {why} (its kernels changed since): tune into a new --db folder"
        ) from None


def shipped_databases(target_name: str) -> list[Path]:
    """The databases shipped for a target definition (``schedules/databases/<target>/*``)."""
    root = SHIPPED / target_name
    return sorted(p for p in root.iterdir() if (p / RECORDS).is_file()) if root.is_dir() else []


def union(folders) -> ms.database.Database | None:
    """One database answering from all ``folders`` (the best record wins); None if empty."""
    dbs = [open_database(f, create=False) for f in folders]
    if not dbs:
        return None
    return dbs[0] if len(dbs) == 1 else ms.database.UnionDatabase(*dbs)


def extract_tasks(mod: tvm.IRModule, target, int8_dot=None) -> list[Task]:
    """The kernels the build of ``mod`` (an integer or float Relax module) compiles for
    ``target``: the tuning tasks, in the order MetaSchedule extracts them."""
    with target:
        fused = tuning_pipeline(int8_dot)(mod)
    extracted = ms.relax_integration.extract_tasks(fused, target)
    return [Task(t.task_name, t.dispatched[0], int(t.weight)) for t in extracted]


def workload_key(mod: tvm.IRModule) -> str:
    """A stable key of a workload (its structural hash), for ``tasks.json``."""
    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def records_of(db, mod: tvm.IRModule) -> list:
    """Every record (measured or failed) of the workload ``mod`` in ``db``."""
    if not db.has_workload(mod):
        return []
    workload = db.commit_workload(mod)  # the stored Workload: nothing is written
    return [
        r
        for r in db.get_all_tuning_records()
        if r.workload.same_as(workload) or tvm_ffi.structural_equal(r.workload.mod, mod)
    ]


def best_seconds(db, mod: tvm.IRModule, target) -> float | None:
    """Mean run time of the best valid record of ``mod`` (any database kind), or None."""
    record = db.query_tuning_record(mod, target, "main")
    if record is None:
        return None
    secs = [float(s) for s in record.run_secs]
    return sum(secs) / len(secs)


def coverage(db, tasks: list[Task], target) -> tuple[list[str], list[str]]:
    """``(tuned task names, task names without a usable record)``."""
    tuned, missing = [], []
    for t in tasks:
        ok = db is not None and best_seconds(db, t.mod, target) is not None
        (tuned if ok else missing).append(t.name)
    return tuned, missing


def prune(folder, tasks: list[Task]) -> int:
    """Keep in the database ``folder`` only the records of ``tasks`` (the kernels a model builds
    now: a kernel whose computation changed is a new workload, and the records of the old one
    would stay forever); returns how many records were dropped. The files are rewritten whole
    and then replace the old ones, so a kill leaves either."""
    import tempfile

    folder = Path(folder)
    db = open_database(folder, create=False)
    keep = [r for t in tasks for r in records_of(db, t.mod)]
    dropped = len(db.get_all_tuning_records()) - len(keep)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        new = ms.database.JSONDatabase(
            str(Path(tmp) / WORKLOADS),
            str(Path(tmp) / RECORDS),
            allow_missing=True,
            module_equality="structural",
        )
        for r in keep:
            new.commit_tuning_record(
                ms.database.TuningRecord(
                    r.trace, new.commit_workload(r.workload.mod), r.run_secs, r.target, r.args_info
                )
            )
        for name in (WORKLOADS, RECORDS):
            (Path(tmp) / name).replace(folder / name)
    keys = {workload_key(t.mod) for t in tasks}
    notes = {k: v for k, v in read_task_notes(folder).items() if k in keys}
    (folder / TASKS).write_text(json.dumps(notes, indent=1, sort_keys=True) + "\n")
    return dropped


def read_task_notes(folder) -> dict:
    path = Path(folder) / TASKS
    return json.loads(path.read_text()) if path.is_file() else {}


def note_task(folder, task: Task, budget: int, records: int) -> None:
    """Remember that the tune of ``task`` ended with ``budget`` (a search that runs out of new
    candidates ends before it; the resumed tune must not retry it forever)."""
    notes = read_task_notes(folder)
    notes[workload_key(task.mod)] = {"name": task.name, "budget": budget, "records": records}
    path = Path(folder) / TASKS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(notes, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def check_cost(folder, cost: str) -> None:
    """Note that ``folder``'s records measure ``cost``; :class:`IntqError` if it already holds
    records of another cost (their numbers cannot be compared, and the best would be wrong)."""
    from tvm_intq.errors import IntqError

    path = Path(folder) / COST
    held = (
        path.read_text().strip()
        if path.is_file()
        else (WALL_TIME if (Path(folder) / RECORDS).is_file() else None)
    )
    if held is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cost + "\n")
    elif held != cost:
        raise IntqError(
            f"{folder} holds records of {held}; this tune measures {cost}: "
            "tune into another --db folder"
        )
