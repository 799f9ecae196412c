"""Tuning (schedules/tune, schedules/database, `tvm-intq tune` / `compile --db`): tiny budgets on
a tiny two-conv model. A tune killed after its first records resumes without measuring a
kernel twice; the tuned library equals the numpy reference bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, s_tir

from tvm_intq import api, cli
from tvm_intq.calibration import load_npz
from tvm_intq.errors import IntqError
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.schedules import database as D
from tvm_intq.schedules.default_schedule import has_default
from tvm_intq.schedules.pipeline import dot_product_for
from tvm_intq.schedules.tune.search import measured_kernels
from tvm_intq.targets import get_target

pytestmark = pytest.mark.integration
HOST = get_target("host")
HOST_INTRIN = dot_product_for(HOST.int8_dot, HOST.target()).tensor_intrin
SHAPE = (1, 3, 8, 8)


def tiny_model(folder: Path) -> tuple[Path, Path]:
    """conv3x3(3->8) + sigmoid -> conv3x3/2(8->16): a model with a handful of kernels, one of
    them with a lookup table (its candidates index the table with the runner's inputs)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["out"], pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, (1, 16, 4, 4))],
        [w1, b1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path, calib = folder / "tiny.onnx", folder / "tiny_calib.npz"
    onnx.save(model, path)
    np.savez(calib, input=rng.normal(size=(24,) + SHAPE[1:]).astype(np.float32))
    return path, calib


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model, calib = tiny_model(folder)
    samples = load_npz(calib, {"input": SHAPE})
    compiled = api.compile_onnx(model, samples, api.QuantConfig(progress=False), "host")
    return SimpleModel(folder, model, calib, compiled.integer)


class SimpleModel:
    def __init__(self, folder, model, calib, integer):
        self.folder, self.model, self.calib, self.integer = folder, model, calib, integer

    def tune_args(self, db, trials=2, per_iter=2):
        return [
            "tune",
            str(self.model),
            "--calib",
            str(self.calib),
            "--target",
            "host",
            "--trials",
            str(trials),
            "--trials-per-iter",
            str(per_iter),
            "--db",
            str(db),
            "--no-progress",
        ]


def records_by_workload(folder) -> dict:
    db = D.open_database(folder, create=False)
    out: dict = {}
    for r in db.get_all_tuning_records():
        out.setdefault(D.workload_key(r.workload.mod), []).append(r)
    return out


def test_tune_then_compile_is_tuned_and_bit_exact(tiny, capsys):
    db_path = tiny.folder / "db"
    assert cli.main(tiny.tune_args(db_path)) == 0
    out = capsys.readouterr().out
    assert "to tune (2 trials each)" in out
    db = D.open_database(db_path, create=False)
    tasks = D.extract_tasks(tiny.integer, HOST.target(), HOST.int8_dot)
    tuned, missing = D.coverage(db, tasks, HOST.target())
    assert missing == [] and len(tuned) == len(tasks)
    # Each kernel's first candidate is what compile builds without a record: the fixed
    # tensorized schedule of a packed conv, the plain legalized kernel (no schedule) otherwise.
    # Every record is one MetaSchedule can return (an empty trace never is: TVM's
    # TuningRecord::IsValid), so a plain kernel that measured fastest is what compile uses.
    by_task = records_by_workload(db_path)
    for t in tasks:
        recs = by_task[D.workload_key(t.mod)]
        assert len(db.get_top_k(db.commit_workload(t.mod), len(recs) + 1)) == len(recs), t.name
        if not has_default(t.mod["main"]):
            replayed = []
            for r in recs:
                sch = s_tir.Schedule(t.mod)
                r.trace.apply_to_schedule(sch, remove_postproc=False)
                replayed.append(tvm_ffi.structural_equal(sch.mod, t.mod))
            assert any(replayed), f"{t.name}: the plain kernel was not measured"
    # Every record is complete JSON on disk (appended as measured).
    lines = (db_path / D.RECORDS).read_text().splitlines()
    assert len(lines) >= len(tasks) and all(json.loads(line) for line in lines)

    # A second tune with the same budget measures nothing.
    assert cli.main(tiny.tune_args(db_path)) == 0
    assert f"{len(tasks)} already tuned" in capsys.readouterr().out
    assert (db_path / D.RECORDS).read_text().splitlines() == lines

    ex = api.build(tiny.integer, HOST, database=db)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = np.load(tiny.calib)["input"]
    for i in range(6):
        got = vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy()
        np.testing.assert_array_equal(got, run_reference(tiny.integer, {"input": x[i : i + 1]}))


def test_compile_says_which_kernels_have_no_record(tiny, capsys, tmp_path):
    empty = tmp_path / "empty_db"
    D.open_database(empty)
    out = tmp_path / "tiny.so"
    assert (
        cli.main(
            [
                "compile",
                str(tiny.model),
                "--calib",
                str(tiny.calib),
                "--db",
                str(empty),
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "tuned kernels: 0 of" in text and "no tuned record for" in text


def test_resume_after_kill_does_not_measure_twice(tiny):
    db_path = tiny.folder / "killed_db"
    trials = 4
    cmd = [sys.executable, "-m", "tvm_intq.cli"] + tiny.tune_args(db_path, trials=trials)
    records = db_path / D.RECORDS
    first = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and first.poll() is None:
            if records.is_file() and len(records.read_text().splitlines()) >= 3:
                break
            time.sleep(0.5)
        assert first.poll() is None, "the tune finished before it could be killed"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the tune and its build/run workers
        first.wait()
    before = records_by_workload(db_path)
    assert sum(len(v) for v in before.values()) >= 3

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    after = records_by_workload(db_path)
    notes = D.read_task_notes(db_path)
    tasks = D.extract_tasks(tiny.integer, HOST.target(), HOST.int8_dot)
    for t in tasks:
        key = D.workload_key(t.mod)
        recs = after.get(key, [])
        # The budget is met exactly (or the search ran out of new kernels, and said so) ...
        assert len(recs) == trials or notes[key]["records"] == len(recs) < trials, t.name
        # ... nothing measured before the kill was measured again ...
        assert len(measured_kernels(recs)) == len(recs), t.name
        traces = Counter(str(r.trace) for r in recs)  # the script, sampling decisions included
        assert max(traces.values()) == 1, t.name
        # ... and what was there is still there.
        assert len(recs) >= len(before.get(key, [])), t.name


def test_prune_keeps_only_the_kernels_the_model_builds(tiny, capsys, tmp_path):
    db_path = tmp_path / "db"
    assert cli.main(tiny.tune_args(db_path, trials=1, per_iter=1) + ["--prune"]) == 0
    assert "pruned 0 records" in capsys.readouterr().out
    tasks = D.extract_tasks(tiny.integer, HOST.target(), HOST.int8_dot)
    assert len(tasks) > 1
    before = records_by_workload(db_path)
    # As if the model had since changed all kernels but the first: the others' records go.
    kept = tasks[:1]
    dropped = D.prune(db_path, kept)
    after = records_by_workload(db_path)
    key = D.workload_key(kept[0].mod)
    assert set(after) == {key}
    assert dropped == sum(len(v) for k, v in before.items() if k != key)
    assert len(after[key]) == len(before[key])
    db = D.open_database(db_path, create=False)
    assert D.best_seconds(db, kept[0].mod, HOST.target()) is not None
    assert set(D.read_task_notes(db_path)) == {key}


def test_a_database_of_older_kernels_gets_a_clear_error(tiny, tmp_path):
    db_path = tmp_path / "db"
    assert cli.main(tiny.tune_args(db_path, trials=1, per_iter=1)) == 0
    records = db_path / D.RECORDS
    text = records.read_text()
    assert HOST_INTRIN in text  # the packed conv's record names its tensor intrinsic
    records.write_text(text.replace(HOST_INTRIN, "intq_retired_intrinsic"))
    with pytest.raises(IntqError, match="'intq_retired_intrinsic'.*new --db folder"):
        D.open_database(db_path, create=False)


def minutes_args(tiny, db, minutes):
    args = tiny.tune_args(db, per_iter=2)
    i = args.index("--trials")
    return args[:i] + ["--minutes", str(minutes)] + args[i + 2 :]


def test_tune_minutes_spends_its_budget_and_resumes(tiny, capsys, tmp_path):
    """--minutes: the heaviest kernel by measured share goes first; the time spent is kept in
    the database (a second run with the same budget measures nothing, a kill and a rerun
    spend only what was left), and no candidate is measured twice."""
    from tvm_intq.schedules.tune import budget as B

    db_path = tmp_path / "db"
    minutes = 1.0
    cmd = [sys.executable, "-m", "tvm_intq.cli"] + minutes_args(tiny, db_path, minutes)
    records = db_path / D.RECORDS
    first = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.time() + 600
        while time.time() < deadline and first.poll() is None:
            if records.is_file() and len(records.read_text().splitlines()) >= 1:
                break
            time.sleep(0.5)
        assert first.poll() is None, "the tune finished before it could be killed"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    tasks = D.extract_tasks(tiny.integer, HOST.target(), HOST.int8_dot)
    key = B.job_key(tasks)
    killed_at = B.spent_seconds(db_path, key)
    assert 0 < killed_at < minutes * 60

    t0 = time.monotonic()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    wall = time.monotonic() - t0
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout
    assert f"{(minutes * 60 - killed_at) / 60:.1f} of {minutes:g} minutes left" in out
    assert "kernel shares measured on this machine" in out
    spent = B.spent_seconds(db_path, key)
    # The budget is spent (unless every search ran out of candidates), overrun by at most
    # the batch in flight at the deadline (2 candidates here; slow on a busy 2-core machine).
    assert spent <= minutes * 60 + 90, spent
    assert spent >= minutes * 60 or "every kernel's search has ended" in out
    assert wall < (minutes * 60 - killed_at) + 240  # quantizing + the shares + one batch
    after = records_by_workload(db_path)
    for recs in after.values():
        assert len(measured_kernels(recs)) == len(recs)  # nothing measured twice

    # Same budget again: nothing left to spend, nothing measured.
    lines = records.read_text().splitlines()
    assert cli.main(minutes_args(tiny, db_path, minutes)) == 0
    assert f"{minutes:g} minutes already spent" in capsys.readouterr().out
    assert records.read_text().splitlines() == lines


def test_kernel_shares_time_a_kernel_that_divides_by_a_tensor():
    """--minutes times every kernel in this process before tuning; an integer division by a
    tensor (PP-OCRv4 rec has one) must not divide by zero there (SIGFPE ended the tune)."""
    from tvm_intq.schedules.tune import budget as B

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((4, 16), "int32"))
    b = relax.Var("b", relax.TensorType((4, 16), "int32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.floor_divide(relax.op.multiply(a, a), b))
        bb.emit_func_output(out)
    mod = bb.get()
    tasks = D.extract_tasks(mod, HOST.target(), HOST.int8_dot)
    seconds = B.kernel_seconds(mod, HOST, tasks, threads=1)
    assert set(seconds) == {t.name for t in tasks} and all(s > 0 for s in seconds.values())


def test_the_first_candidate_of_every_kernel_is_what_compile_builds(tiny):
    """Tuning measures the untuned kernel first, so a database never holds only kernels
    worse than compiling without one. For kernels without a conv it measured the plain loop
    nest, while compile builds apply_elementwise's parallel, inlined one: a 2-minute tune made
    PP-OCRv4 det slower than no tuning."""
    from tvm_intq.schedules.default_schedule import DefaultDotSchedule
    from tvm_intq.schedules.tune.first_candidates import first_candidates

    intrin = dot_product_for(HOST.int8_dot, HOST.target())
    tasks = D.extract_tasks(tiny.integer, HOST.target(), HOST.int8_dot)
    assert any(not has_default(t.mod["main"]) for t in tasks)  # kernels without a conv too
    # compile's schedule depends on the target (a lookup gathered with AVX-512 VBMI's permutes,
    # vectorized): the tune's first candidate must follow the target it tunes for
    vbmi = tvm.target.Target({"kind": "llvm", "mcpu": "znver4"})
    for target in (HOST.target(), vbmi):
        for t in tasks:
            first = first_candidates(t, intrin, target)[0].mod["main"]
            with target:  # on a module of its own: the pass schedules its module in place
                built = DefaultDotSchedule(intrin)(tvm.IRModule({"main": t.mod["main"]}))["main"]
            assert tvm_ffi.structural_equal(first.body, built.body), (t.name, str(target))
