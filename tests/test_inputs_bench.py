"""``tvm-intq bench``: the bad-input corpus (issue 20), refused before anything is compiled or
a board is asked for. Each case: non-zero exit, one line, no input changed, nothing left
behind."""

from __future__ import annotations

import shutil

import pytest
from cli_cases import CALIB, MODEL, refused

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.fixture
def work(tmp_path):
    shutil.copy(MODEL, tmp_path / "m.onnx")
    shutil.copy(CALIB, tmp_path / "c.npz")
    return tmp_path


def bench_args(*extra, key=("--key", "aarch64-emu")):
    return ["bench", "m.onnx", "--calib", "c.npz", "--target", "aarch64", *key, *extra]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--repeat", "0"], ["--repeat 0", ">= 1"]),
        (["--number", "0"], ["--number 0", ">= 1"]),
        (["--warmup", "-1"], ["--warmup -1", ">= 0"]),
        (["--check-samples", "0"], ["--check-samples 0", ">= 1"]),
        (["--timeout", "0"], ["--timeout 0", "> 0"]),
        (["--json", "m.onnx"], ["--json m.onnx", "model"]),
        (["--json", "."], ["--json .", "folder"]),
        (["--out", "c.npz"], ["--out c.npz", "is a file"]),
        (["--db", "c.npz"], ["--db c.npz", "folder"]),
        (["--db", "x", "--no-db"], ["--no-db", "--db"]),
        (["--target", "vax"], ["vax", "known targets"]),
    ],
)
def test_flags(work, extra, words):
    refused(work, bench_args(*extra), *words)


@pytest.mark.parametrize(
    "extra", [["--repeat", "5"], ["--tracker", "127.0.0.1:9190"], ["--timeout", "30"]]
)
def test_board_timing_flags_without_key(work, extra):
    """Without --key the emulated figures count instructions: a --repeat was ignored."""
    refused(work, bench_args(*extra, key=()), extra[0], "--key", "ignore")


def test_missing_inputs(work):
    refused(work, ["bench", "nope.onnx", "--calib", "c.npz", "--target", "aarch64"], "nope.onnx")
    refused(work, bench_args("--calib", "nope.npz"), "--calib nope.npz", "no such")
