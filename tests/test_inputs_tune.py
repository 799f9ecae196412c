"""``tvm-intq tune``: the bad-input corpus (issue 20), refused before anything is compiled
(``--trials-per-iter 0`` ran 7 minutes, ``--db`` naming a file ended in a traceback). Each
case: non-zero exit, one line, no input changed, nothing left behind. What tune does with a
damaged database is in test_tuning_database.py."""

from __future__ import annotations

import pytest
from cli_cases import read_only, refused, tiny_calib, tiny_conv_model

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.fixture
def work(tmp_path):
    tiny_conv_model(tmp_path / "t.onnx")
    tiny_calib(tmp_path / "c.npz")
    return tmp_path


def tune_args(*extra, db="db"):
    return ["tune", "t.onnx", "--calib", "c.npz", "--trials", "4", "--db", db, *extra]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--trials", "0"], ["--trials 0", "at least 1"]),
        (["--trials-per-iter", "0"], ["--trials-per-iter 0", "at least 1"]),
        (["--seed", "-1"], ["--seed -1", ">= 0"]),
        (["--threads", "0"], ["--threads"]),
        (["--wait", "0"], ["--wait 0", "> 0"]),
        (["--wait", "nan"], ["--wait", "finite"]),
        (["--wait", "30"], ["--wait", "--tracker"]),  # ignored without a board to wait for
        (["--max-drop", "1"], ["--max-drop", "--float-layers auto"]),
        (["--float-layers", "auto", "--max-drop", "-1"], ["--max-drop -1", ">= 0"]),
        (["--percentile", "101"], ["--percentile 101"]),
        (["--fp32", "--scheme", "pow2"], ["--fp32", "--scheme"]),
        (["--tracker", "127.0.0.1:9190"], ["--tracker", "--key"]),
        (["--cost", "instructions"], ["--cost instructions", "--key"]),
        (["--core", "neoverse-n1"], ["--core", "--cost mca"]),
        (["--target", "aarch64"], ["aarch64", "--tracker"]),
        (["--trials", "x"], ["--trials", "invalid int"]),
    ],
)
def test_flags(work, extra, words):
    refused(work, tune_args(*extra), *words)


@pytest.mark.parametrize(
    "db, words",
    [
        ("c.npz", ["--db c.npz", "is a file"]),  # was a traceback
        ("t.onnx", ["--db t.onnx", "is a file"]),
        ("c.npz/db", ["c.npz", "is a file"]),
        ("", ["--db", "empty"]),
    ],
)
def test_database_folder(work, db, words):
    refused(work, tune_args(db=db), *words)


def test_database_in_a_read_only_folder(work):
    read_only(work / "ro")
    refused(work, tune_args(db="ro/db"), "ro", "cannot write", unprivileged=True)


def test_missing_model_and_data(work):
    refused(work, ["tune", "nope.onnx", "--trials", "4", "--db", "db"], "nope.onnx", "no such")
    refused(work, tune_args() + ["--calib", "nope.npz"], "--calib nope.npz", "no such")
