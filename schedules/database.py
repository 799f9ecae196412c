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
import logging
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from tvm_intq.files import write_text
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


@dataclass
class Scan:
    """A database file read line by line: its good lines (in order, with their line numbers)
    and its damaged ones (not complete JSON of the expected shape: a tune killed while
    writing a line, or a file edited by hand)."""

    path: Path
    good: list  # (line number, text)
    damaged: list  # line numbers, 1-based
    unterminated: bool  # the last line has no newline (it may still be complete)


def scan(path: Path, workloads: int | None = None) -> Scan:
    """Read ``path`` without changing it. A record line must be ``[workload index, [...]]``
    with an index below ``workloads`` (when given); a workload line ``[hash, module]``."""
    if not path.is_file():
        return Scan(path, [], [], False)
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    good, damaged = [], []
    for k, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            damaged.append(k)
            continue
        if workloads is None:
            ok = isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
        else:
            ok = (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], int)
                and 0 <= value[0] < workloads
            )
        (good.append((k, raw.decode())) if ok else damaged.append(k))
    return Scan(path, good, damaged, bool(data) and not data.endswith(b"\n"))


def _describe(s: Scan) -> str:
    lines = ", ".join(map(str, s.damaged[:5])) + (" ..." if len(s.damaged) > 5 else "")
    last = s.damaged and s.damaged[-1] == len(s.good) + len(s.damaged) and s.unterminated
    why = " (cut short: a tune stopped while writing it)" if last and len(s.damaged) == 1 else ""
    return f"{s.path}: line{'s' if len(s.damaged) > 1 else ''} {lines} damaged{why}"


def _clean(workloads: Scan, records: Scan) -> tuple[str, str, list]:
    """The two files' text without their damaged lines; a record whose workload line is
    damaged is dropped too, and the others' workload indices renumbered (a record names its
    workload by its line, damaged lines counted). Returns ``(workloads, records, the record
    lines dropped for their workload)``."""
    index = {k - 1: new for new, (k, _) in enumerate(workloads.good)}
    kept, lost = [], []
    for _, text in records.good:
        value = json.loads(text)
        if value[0] not in index:
            lost.append(text)
        elif index[value[0]] == value[0]:
            kept.append(text)  # as TVM wrote it
        else:
            kept.append(json.dumps([index[value[0]], value[1]], separators=(",", ":")))
    return "".join(t + "\n" for _, t in workloads.good), "".join(t + "\n" for t in kept), lost


def _warn(message: str) -> None:
    """Damage is reported, never silent (logging's last-resort handler prints warnings to
    stderr when nobody configured logging)."""
    logging.getLogger("tvm_intq.database").warning("tvm-intq: warning: %s", message)


def check_database(folder, writable: bool, unreplayable=()) -> tuple[Scan, Scan]:
    """Scan the two files of a database and report every damaged line, by line number. A
    read leaves the files as they are; a writer (``tune``, which appends) moves the damaged
    lines to ``<file>.damaged`` beside them (rewriting each file whole, temporary file then
    rename) and ends an unterminated last line, so no new record is glued onto it. The record
    lines ``unreplayable`` (:func:`_unreplayable`) count as damaged."""
    folder = Path(folder)
    workloads = scan(folder / WORKLOADS)
    records = scan(folder / RECORDS, workloads=len(workloads.good) + len(workloads.damaged))
    if unreplayable:
        records = Scan(
            records.path,
            [(k, t) for k, t in records.good if k not in unreplayable],
            sorted(set(records.damaged) | set(unreplayable)),
            records.unterminated,
        )
    damaged = [s for s in (workloads, records) if s.damaged]
    if not damaged:
        if writable:
            for s in (workloads, records):
                if s.unterminated:
                    with open(s.path, "ab") as f:  # complete JSON, only the newline missing
                        f.write(b"\n")
        return workloads, records
    wl_text, rec_text, lost = _clean(workloads, records)
    lost_note = (
        f"; {len(lost)} record(s) of the damaged workload line(s) cannot be used" if lost else ""
    )
    for s in damaged:
        if not writable:
            _warn(f"{_describe(s)}: skipped, the file is left as it is{lost_note}")
            continue
        lines = s.path.read_bytes().split(b"\n")
        _set_aside(s.path, [lines[k - 1] for k in s.damaged])
        _warn(f"{_describe(s)}: moved to {s.path.name}.damaged{lost_note}")
    if writable:
        if lost:  # kept beside the database, not lost
            _set_aside(records.path, [t.encode() for t in lost])
        write_text(folder / WORKLOADS, wl_text)
        write_text(folder / RECORDS, rec_text)
    return workloads, records


def _unreplayable(folder: Path) -> list[int]:
    """Line numbers of the records whose trace does not replay on their workload. TVM's loader
    stops at the first such record, which would make the whole database unreadable;
    MetaSchedule can measure and commit one (an ``RFactor`` of a sum, seen on aarch64)."""
    workloads = scan(folder / WORKLOADS)
    records = scan(folder / RECORDS, workloads=len(workloads.good) + len(workloads.damaged))
    by_index = {k - 1: ms.database.Workload.from_json(json.loads(t)) for k, t in workloads.good}
    bad = []
    for k, text in records.good:
        index, record = json.loads(text)
        if index in by_index:
            try:
                ms.database.TuningRecord.from_json(record, by_index[index])
            except RuntimeError:
                bad.append(k)
    return bad


def _set_aside(path: Path, lines: list) -> None:
    with open(path.with_name(path.name + ".damaged"), "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))


def open_database(
    folder, create: bool = True, writable: bool | None = None
) -> ms.database.JSONDatabase:
    """The JSON database in ``folder`` (created if missing and ``create``). ``writable``
    (default: ``create``) is for a tune, which appends to the files; a read (``compile
    --db``) never writes them: damaged lines are reported and skipped in memory."""
    import tempfile

    from tvm_intq.errors import IntqError

    folder = Path(folder)
    writable = create if writable is None else writable
    if not folder.is_dir():
        if not create:
            raise FileNotFoundError(f"{folder}: no tuning database here")
        folder.mkdir(parents=True)
    if not writable:
        missing = [n for n in (WORKLOADS, RECORDS) if not (folder / n).is_file()]
        if missing:
            raise IntqError(
                f"{folder}: not a tuning database ({' and '.join(missing)} missing); "
                "make one with tvm-intq tune"
            )
    register()  # the records' traces name our tensor intrinsics

    def load(unreplayable=()):
        workloads, records = check_database(folder, writable, unreplayable)
        if writable or not (workloads.damaged or records.damaged):
            return _json_database(folder)
        # A read of a damaged database: the good lines, from a copy (TVM reads files only).
        wl_text, rec_text, _ = _clean(workloads, records)
        with tempfile.TemporaryDirectory(prefix="tvm-intq-db-") as tmp:
            (Path(tmp) / WORKLOADS).write_text(wl_text)
            (Path(tmp) / RECORDS).write_text(rec_text)
            return _in_memory(_json_database(Path(tmp)))

    try:
        try:
            return load()
        except RuntimeError as err:  # TVM replays every record's trace when it loads them
            bad = [] if "is not registered" in str(err) else _unreplayable(folder)
            if not bad or len(bad) == len(scan(folder / RECORDS).good):
                raise  # none to blame, or all of them: the kernels changed (below)
            lines = ", ".join(map(str, bad))
            _warn(
                f"{folder / RECORDS}: line{'s' if len(bad) > 1 else ''} {lines}: a trace "
                "that does not replay on its kernel (MetaSchedule measured it, then cannot "
                "apply it again)"
            )
            return load(bad)
    except RuntimeError as err:
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


def _in_memory(db) -> ms.database.MemoryDatabase:
    """The records of ``db`` in a database that holds no file."""
    mem = ms.database.MemoryDatabase(module_equality="structural")
    for r in db.get_all_tuning_records():
        mem.commit_tuning_record(
            ms.database.TuningRecord(
                r.trace, mem.commit_workload(r.workload.mod), r.run_secs, r.target, r.args_info
            )
        )
    return mem


def _json_database(folder: Path) -> ms.database.JSONDatabase:
    return ms.database.JSONDatabase(
        str(folder / WORKLOADS),
        str(folder / RECORDS),
        allow_missing=True,
        module_equality="structural",
    )


def shipped_databases(target_name: str) -> list[Path]:
    """The databases shipped for a target definition (``schedules/databases/<target>/*``)."""
    root = SHIPPED / target_name
    return sorted(p for p in root.iterdir() if (p / RECORDS).is_file()) if root.is_dir() else []


def union(folders) -> ms.database.Database | None:
    """One database answering from all ``folders`` (the best record wins); None if empty."""
    return union_of([open_database(f, create=False) for f in folders])


def union_of(dbs) -> ms.database.Database | None:
    """One database answering from all of ``dbs`` (opened databases); None if empty."""
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
    db = open_database(folder, create=False, writable=True)
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
    write_text(folder / TASKS, json.dumps(notes, indent=1, sort_keys=True) + "\n")
    return dropped


def read_task_notes(folder) -> dict:
    """``tasks.json``; a damaged one is reported and read as empty (the tasks it noted are
    looked at again, nothing is lost: the records are in the database files)."""
    path = Path(folder) / TASKS
    if not path.is_file():
        return {}
    try:
        notes = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        _warn(f"{path}: damaged ({getattr(err, 'msg', err)}); its notes are ignored")
        return {}
    return notes if isinstance(notes, dict) else {}


def note_task(folder, task: Task, budget: int, records: int) -> None:
    """Remember that the tune of ``task`` ended with ``budget`` (a search that runs out of new
    candidates ends before it; the resumed tune must not retry it forever)."""
    notes = read_task_notes(folder)
    notes[workload_key(task.mod)] = {"name": task.name, "budget": budget, "records": records}
    write_text(Path(folder) / TASKS, json.dumps(notes, indent=1, sort_keys=True) + "\n")


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
        write_text(path, cost + "\n")
    elif held != cost:
        raise IntqError(
            f"{folder} holds records of {held}; this tune measures {cost}: "
            "tune into another --db folder"
        )
