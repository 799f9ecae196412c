"""``tvm-intq export-qdq``: the bad-input corpus (issue 20), and the round trip it exists for:
the exported model compiles back into the integers ``compile`` builds from the float model
with the same calibration, bit for bit (here through the real command line; the API-level
round trips of each scheme are in test_export_qdq.py)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from cli_cases import CALIB, MODEL, read_only, refused, run_cli

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.fixture
def work(tmp_path):
    shutil.copy(MODEL, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", input=np.load(CALIB)["input"][:40])
    return tmp_path


def export_args(*extra, out="q.onnx"):
    return ["export-qdq", "m.onnx", "--calib", "c.npz", "-o", out, "--no-progress", *extra]


@pytest.mark.parametrize(
    "out, words",
    [
        ("m.onnx", ["-o m.onnx", "model", "destroy"]),  # replaced the float model
        ("c.npz", ["-o c.npz", "--calib"]),
        ("nodir/q.onnx", ["nodir", "does not exist"]),
        (".", ["-o .", "folder"]),
    ],
)
def test_output_path(work, out, words):
    refused(work, export_args(out=out), *words)


def test_output_in_a_read_only_folder(work):
    read_only(work / "ro")
    refused(work, export_args(out="ro/q.onnx"), "ro", "cannot write", unprivileged=True)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--scheme", "auto"], ["--scheme auto", "one scheme"]),
        (["--integer-only"], ["--integer-only", "compile"]),
        (["--percentile", "0"], ["--percentile 0"]),
        (["--calibrator", "mse", "--percentile", "99"], ["--percentile", "mse"]),
        (["--eval", "nope.npz"], ["--eval nope.npz", "no such"]),
    ],
)
def test_flags(work, extra, words):
    refused(work, export_args(*extra), *words)


def test_full_disk_leaves_no_partial_model(work):
    """The QDQ model (~50 KB) is written past a 16 KiB file-size limit (as on a full disk):
    one line, and no partial q.onnx."""
    refused(work, export_args(), "q.onnx", "cannot write", file_size=16384)


@pytest.mark.integration
def test_export_then_compile_gives_the_same_integers(work):
    """`tvm-intq compile model.qdq.onnx` said 5 layers cannot be folded; now the library it
    builds computes exactly what the float model compiled with the same --calib computes."""
    assert run_cli(*export_args(), cwd=work).returncode == 0
    for args in (
        ["compile", "q.onnx", "-o", "q.so", "--no-progress"],
        ["compile", "m.onnx", "--calib", "c.npz", "-o", "f.so", "--no-progress"],
    ):
        proc = run_cli(*args, cwd=work)
        assert proc.returncode == 0, proc.stderr
    x = np.load(CALIB)["input"][-32:]
    np.savez(work / "x.npz", input=x)
    for lib in ("q", "f"):
        proc = run_cli("run", f"{lib}.so", "--input", "x.npz", "-o", f"{lib}.npz", cwd=work)
        assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(
        np.load(work / "q.npz")["logits"], np.load(work / "f.npz")["logits"]
    )
