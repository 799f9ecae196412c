"""``tvm-intq run``: the bad-input corpus (issue 20). A library is checked against its sidecar
(size, SHA-256, target triple) before anything loads it: a truncated or corrupted ``.so``
killed the process with SIGBUS/SIGSEGV, an empty or random one gave a 23-line traceback.
Each case: non-zero exit, one line naming the problem, no input changed, nothing left behind
(:func:`cli_cases.refused`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_cases import read_only, refused, run_cli, tiny_calib, tiny_conv_model

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A host library of the tiny conv model (float: the quickest build), with its sidecar."""
    folder = tmp_path_factory.mktemp("lib")
    tiny_conv_model(folder / "t.onnx")
    proc = run_cli("compile", folder / "t.onnx", "--fp32", "-o", folder / "t.so")
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture
def work(tmp_path, built):
    for name in ("t.so", "t.so.json"):
        shutil.copy(built / name, tmp_path / name)
    tiny_calib(tmp_path / "x.npz")
    return tmp_path


def run_args(lib="t.so", inputs="x.npz", out="y.npz"):
    return ["run", lib, "--input", inputs, "-o", out]


def test_runs_and_writes_exactly_the_name_given(work):
    """Success, for reference: ``-o y`` said "wrote y" but wrote ``y.npz``."""
    proc = run_cli(*run_args(out="y"), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote y: y [8, 4, 8, 8]")
    assert np.load(work / "y")["y"].shape == (8, 4, 8, 8) and not (work / "y.npz").exists()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


# ---- the library and its sidecar ---------------------------------------------------------
def _truncated(lib):
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 2])


def _corrupted(lib):
    data = bytearray(lib.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = b"\xff" * 16
    lib.write_bytes(bytes(data))


def _random(lib):
    lib.write_bytes(np.random.default_rng(0).bytes(lib.stat().st_size))


def _empty(lib):
    lib.write_bytes(b"")


@pytest.mark.parametrize(
    "damage, words",
    [
        (_truncated, ["t.so", "bytes", "cut short", "compile it again"]),  # was SIGBUS
        (_corrupted, ["t.so", "SHA-256", "corrupted"]),  # was SIGSEGV
        (_random, ["t.so", "SHA-256"]),  # was a 23-line traceback
        (_empty, ["t.so", "0 bytes"]),
    ],
    ids=["truncated", "corrupted", "random", "empty"],
)
def test_damaged_library(work, damage, words):
    damage(work / "t.so")
    refused(work, run_args(), *words)


@pytest.mark.parametrize(
    "sidecar, words",
    [
        (None, ["t.so.json is missing"]),
        (b"", ["t.so.json", "empty"]),
        ("cut", ["t.so.json", "not valid JSON"]),  # a truncated sidecar was a traceback
        (b"[1, 2]", ["t.so.json", "not a JSON object"]),
        ("old", ["no size and SHA-256", "older"]),
        ("no-inputs", ["t.so.json", "'inputs'"]),
        ("aarch64", ["built for aarch64", "board"]),
    ],
    ids=["missing", "empty", "truncated", "not-object", "old", "no-inputs", "other-target"],
)
def test_bad_sidecar(work, sidecar, words):
    path = work / "t.so.json"
    meta = json.loads(path.read_text())
    if sidecar is None:
        path.unlink()
    elif sidecar == "cut":
        path.write_bytes(path.read_bytes()[:40])
    elif sidecar == "old":  # what compile wrote before the library was recorded
        path.write_text(
            json.dumps({k: v for k, v in meta.items() if k not in ("library", "target_triple")})
        )
    elif sidecar == "no-inputs":
        path.write_text(json.dumps({k: v for k, v in meta.items() if k != "inputs"}))
    elif sidecar == "aarch64":
        path.write_text(json.dumps({**meta, "target": "aarch64"}))
    else:
        path.write_bytes(sidecar)
    refused(work, run_args(), *words)


def test_missing_library(work):
    refused(work, run_args(lib="nope.so"), "nope.so", "no such library")


def test_library_is_a_folder(work):
    (work / "d.so").mkdir()
    refused(work, run_args(lib="d.so"), "d.so", "folder")


# ---- the inputs --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, words",
    [
        (None, ["--input nope.npz", "no such"]),
        (lambda p: p.write_bytes(b"not an npz"), ["x.npz", "npz"]),
        (lambda p: np.savez(p, x=np.zeros((2, 1, 9, 9), np.float32)), ["'x'", "shape"]),
        (lambda p: np.savez(p, z=np.zeros((2, 1, 8, 8), np.float32)), ["'x'", "missing"]),
        (lambda p: np.savez(p, x=np.full((2, 1, 8, 8), np.inf, np.float32)), ["'x'", "Inf"]),
    ],
    ids=["missing", "not-npz", "shape", "name", "inf"],
)
def test_bad_input(work, make, words):
    if make is None:
        refused(work, run_args(inputs="nope.npz"), *words)
        return
    make(work / "x.npz")
    refused(work, run_args(), *words)


# ---- the output --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "out, words",
    [
        ("nodir/y.npz", ["nodir", "does not exist"]),
        (".", ["-o .", "folder"]),
        ("t.so", ["-o t.so", "library", "destroy"]),
        ("t.so.json", ["-o t.so.json", "sidecar"]),
        ("x.npz", ["-o x.npz", "--input"]),
    ],
)
def test_output_path(work, out, words):
    refused(work, run_args(out=out), *words)


def test_output_in_a_read_only_folder(work):
    read_only(work / "ro")
    refused(work, run_args(out="ro/y.npz"), "ro", "cannot write", unprivileged=True)


def test_full_disk_leaves_no_partial_output(work):
    """A write that fails half-way (a full disk; here a file-size limit) left a partial
    y.npz and a traceback."""
    tiny_calib(work / "x.npz", n=64)  # 64 outputs of 1 KiB: past the 16 KiB limit
    refused(work, run_args(), "y.npz", "cannot write", "nothing was written", file_size=16384)
