"""Tuning databases (schedules/database.py): a damaged line is reported by its number, a read
never writes, a writer sets damaged lines aside; and the
database shipped for the bundled model covers every kernel `compile` builds for the host and
still computes the numpy reference bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_intq import api
from tvm_intq.calibration import load_npz
from tvm_intq.demo import bundled
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.frontends import import_model
from tvm_intq.schedules import database as D
from tvm_intq.targets import get_target

pytestmark = pytest.mark.integration  # whole models, boards or processes

HOST = get_target("host")


RECORD = '[0,[[[],[]],[1.0e-05],{"kind":"llvm"},[]]]'
WORKLOAD = '["123","AAAA"]'


def _database(folder, workloads, records):
    folder.mkdir(exist_ok=True)
    (folder / D.WORKLOADS).write_text(workloads)
    (folder / D.RECORDS).write_text(records)
    return folder


def test_a_read_never_writes_and_names_the_damaged_line(tmp_path, caplog):
    """compile --db dropped a cut record line and rewrote the file one line shorter."""
    db = _database(tmp_path / "db", WORKLOAD + "\n", RECORD + "\n" + RECORD + "\n[0, [[")
    before = {p.name: p.read_bytes() for p in db.iterdir()}
    workloads, records = D.check_database(db, writable=False)
    assert records.damaged == [3] and len(records.good) == 2 and records.unterminated
    assert {p.name: p.read_bytes() for p in db.iterdir()} == before
    assert "line 3 damaged (cut short" in caplog.text and "left as it is" in caplog.text


def test_a_cut_workload_line_does_not_shift_the_records(tmp_path):
    """A cut workload line was dropped and every later record pointed at the wrong kernel."""
    other = '["456","BBBB"]'
    db = _database(
        tmp_path / "db",
        WORKLOAD + "\n" + '["78' + "\n" + other + "\n",
        RECORD + "\n" + RECORD.replace("[0,", "[1,", 1) + "\n" + RECORD.replace("[0,", "[2,", 1),
    )
    workloads, records = D.check_database(db, writable=False)
    assert workloads.damaged == [2]
    wl, rec, lost = D._clean(workloads, records)
    assert wl == WORKLOAD + "\n" + other + "\n"
    assert [json.loads(line)[0] for line in rec.splitlines()] == [0, 1]  # 2 -> 1: `other`
    assert [json.loads(line)[0] for line in lost] == [1]  # its workload is the damaged line


def test_a_writer_sets_damaged_lines_aside(tmp_path, caplog):
    """tune (which appends) moves damaged lines beside the database and ends the file with a
    newline, so its next record is not glued onto a cut line."""
    db = _database(tmp_path / "db", WORKLOAD + "\n", RECORD + "\n[0, [[")
    D.check_database(db, writable=True)
    assert (db / D.RECORDS).read_text() == RECORD + "\n"
    assert (db / (D.RECORDS + ".damaged")).read_text() == "[0, [[\n"
    assert "moved to database_tuning_record.json.damaged" in caplog.text
    complete = _database(tmp_path / "db2", WORKLOAD + "\n", RECORD)  # only the newline missing
    D.check_database(complete, writable=True)
    assert (complete / D.RECORDS).read_text() == RECORD + "\n"


def test_damaged_task_notes_are_reported_not_fatal(tmp_path, caplog):
    (tmp_path / D.TASKS).write_text('{"abc": {"budget"')
    assert D.read_task_notes(tmp_path) == {}
    assert "tasks.json: damaged" in caplog.text


def test_missing_folder_is_an_error_when_not_creating(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.open_database(tmp_path / "nope", create=False)


@pytest.mark.integration
def test_shipped_database_covers_the_bundled_model_and_is_exact():
    """The shipped host database holds the bundled model's kernels for both x86 dot products
    (tuned on an AVX512-VNNI CPU and on an AVX2 one, COMMAND.md): whichever this host uses."""
    shipped = [p for p in D.shipped_databases("host") if p.name == "mnist_cnn"]
    assert shipped, "schedules/databases/host/mnist_cnn is missing"
    model = bundled("mnist_cnn.onnx")
    _, info = import_model(model)
    calib = load_npz(bundled("calib.npz"), info.inputs)
    # What `tvm-intq compile mnist_cnn.onnx --calib calib.npz` builds (the shipped command).
    integer = api.compile_onnx(model, calib, api.QuantConfig(progress=False), "host").integer
    db = D.union(shipped)
    tasks = D.extract_tasks(integer, HOST.target(), HOST.int8_dot)
    tuned, missing = D.coverage(db, tasks, HOST.target())
    assert missing == [], missing
    vm = relax.VirtualMachine(api.build(integer, HOST, database=db), tvm.cpu())
    x = np.load(bundled("heldout.npz"))["input"][:8]
    for i in range(len(x)):
        got = vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy()
        np.testing.assert_array_equal(got, run_reference(integer, {"input": x[i : i + 1]}))


def test_a_record_whose_trace_does_not_replay_is_set_aside_not_fatal(tmp_path, caplog):
    """MetaSchedule committed a measured trace it could not apply again (an RFactor of a sum,
    aarch64); TVM's loader stopped at it and the whole database became unreadable."""
    import shutil

    db = tmp_path / "db"
    shutil.copytree(D.SHIPPED / "host" / "mnist_cnn", db)
    lines = (db / D.RECORDS).read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if '["GetSBlock",[],["root","main"]' in line)
    lines[k] = lines[k].replace(
        '["GetSBlock",[],["root","main"]', '["GetSBlock",[],["no","main"]', 1
    )
    (db / D.RECORDS).write_text("\n".join(lines) + "\n")
    before = (db / D.RECORDS).read_bytes()

    read = D.open_database(db, create=False, writable=False)
    assert len(read.get_all_tuning_records()) == len(lines) - 1
    assert (db / D.RECORDS).read_bytes() == before  # a read never writes
    assert f"line {k + 1}: a trace that does not replay on its kernel" in caplog.text

    written = D.open_database(db, create=False, writable=True)  # a tune's
    assert len(written.get_all_tuning_records()) == len(lines) - 1
    assert (db / (D.RECORDS + ".damaged")).read_text() == lines[k] + "\n"
