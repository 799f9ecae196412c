"""Tuning databases (schedules/database.py): a record file cut by a kill is repaired, and the
database shipped for the bundled model covers every kernel `compile` builds for the host and
still computes the numpy reference bit for bit."""

from __future__ import annotations

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
from tvm_intq.schedules.intrinsics import INTRINSICS, supported
from tvm_intq.targets import get_target

pytestmark = pytest.mark.integration  # whole models, boards or processes

HOST = get_target("host")


def test_partial_last_line_is_dropped(tmp_path):
    D.open_database(tmp_path)  # creates the two files
    records = tmp_path / D.RECORDS
    records.write_text("[0, [[], [], [1.0]]]\n[1, [[")  # a kill in the middle of a write
    assert D._repair(records) == 1
    assert records.read_text() == "[0, [[], [], [1.0]]]\n"


def test_missing_folder_is_an_error_when_not_creating(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.open_database(tmp_path / "nope", create=False)


@pytest.mark.integration
@pytest.mark.skipif(
    not supported(INTRINSICS["x86-vnni"], HOST.target()),
    reason="the shipped host database was tuned on an AVX512-VNNI CPU",
)
def test_shipped_database_covers_the_bundled_model_and_is_exact():
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
