"""``tvm-intq eval``: the bad-input corpus (issue 20). ``--out`` naming a file ended in a
traceback after the whole evaluation; it and the rest are refused first. Each case: non-zero
exit, one line, no input changed, nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
from cli_cases import read_only, refused, tiny_calib, tiny_conv_model

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.fixture
def work(tmp_path):
    tiny_conv_model(tmp_path / "t.onnx")
    tiny_calib(tmp_path / "c.npz")
    return tmp_path


def eval_args(*extra):
    return ["eval", "t.onnx", "--calib", "c.npz", "--no-progress", *extra]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--out", "c.npz"], ["--out c.npz", "is a file"]),
        (["--out", "c.npz/sub"], ["c.npz", "is a file"]),
        (["--percentile", "-5"], ["--percentile -5"]),
        (["--calibrator", "kl", "--percentile", "99"], ["--percentile", "kl"]),
        (["--max-drop", "1"], ["--max-drop", "--float-layers auto"]),
        (["--float-layers", "auto"], ["--float-layers auto", "target"]),
        (["--eval", "nope.npz"], ["--eval nope.npz", "no such"]),
        (["--scheme", "int4"], ["--scheme", "invalid choice"]),
    ],
)
def test_flags(work, extra, words):
    refused(work, eval_args(*extra), *words)


def test_report_inside_out_is_a_folder(work):
    (work / "out" / "report.json").mkdir(parents=True)
    refused(work, eval_args("--out", "out"), "report.json", "folder")


def test_out_in_a_read_only_folder(work):
    read_only(work / "ro")
    refused(work, eval_args("--out", "ro/out"), "ro", "cannot write", unprivileged=True)


def test_labels_that_do_not_match_the_samples(work):
    """20 samples and 5 labels printed a top-1 and exited 0."""
    tiny_calib(work / "e.npz", n=20, labels=np.arange(5))
    refused(work, eval_args("--eval", "e.npz"), "e.npz", "'labels' has 5 entries for 20")


def test_max_drop_without_labels(work):
    refused(work, eval_args("--float-layers", "auto", "--max-drop", "1"), "--max-drop", "labels")
