"""``tvm-intq compile``: the bad-input corpus (issue 20). Each case exits non-zero with one
line naming the problem, no traceback, no input changed and nothing left behind
(:func:`cli_cases.refused`). Most are refused before TVM is loaded."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from cli_cases import (
    CALIB,
    MODEL,
    qdq_model,
    read_only,
    refused,
    run_cli,
    save_model,
    tiny_calib,
    tiny_conv_model,
)
from onnx import TensorProto, helper

pytestmark = pytest.mark.integration  # processes: the CLI run as a user runs it


@pytest.fixture
def work(tmp_path):
    shutil.copy(MODEL, tmp_path / "m.onnx")
    x = np.load(CALIB)["input"][:8]
    np.savez(tmp_path / "c.npz", input=x)
    return tmp_path


def compile_args(*extra, model="m.onnx", calib="c.npz", out="m.so"):
    args = ["compile", model]
    if calib:
        args += ["--calib", calib]
    return [*args, "-o", out, "--no-progress", *extra]


# ---- outputs: where compile writes -------------------------------------------------------
@pytest.mark.parametrize(
    "out, words",
    [
        ("m.onnx", ["-o m.onnx", "model", "destroy"]),  # overwrote the model, exit 0
        ("c.npz", ["-o c.npz", "--calib", "destroy"]),  # overwrote the calibration data
        ("nodir/m.so", ["nodir", "does not exist"]),
        (".", ["-o .", "folder"]),
        ("", ["-o", "empty"]),
    ],
)
def test_output_path(work, out, words):
    refused(work, compile_args(out=out), *words)


def test_output_in_a_read_only_folder(work):
    read_only(work / "ro")
    refused(work, compile_args(out="ro/m.so"), "ro", "cannot write", unprivileged=True)


def test_output_sidecar_is_an_input(work):
    shutil.copy(work / "c.npz", work / "m.so.json")
    refused(work, compile_args(calib="m.so.json"), "sidecar", "--calib")


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--report", "m.onnx"], ["--report m.onnx", "model"]),
        (["--report", "m.so"], ["--report", "-o", "two different"]),
        (["--report", "c.npz"], ["--report c.npz", "--calib"]),
    ],
)
def test_report_path(work, extra, words):
    refused(work, compile_args(*extra), *words)


# ---- flags: ranges and combinations ------------------------------------------------------
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--percentile", "0"], ["--percentile 0", "> 0"]),
        (["--percentile", "120"], ["--percentile 120", "<= 100"]),
        (["--percentile", "nan"], ["--percentile", "finite"]),
        (["--calibrator", "minmax", "--percentile", "99"], ["--percentile", "minmax"]),
        (["--max-drop", "1"], ["--max-drop", "--float-layers auto"]),  # was ignored silently
        (["--min-sqnr", "30"], ["--min-sqnr", "--float-layers auto"]),
        (["--float-layers", "auto", "--max-drop", "-1"], ["--max-drop -1", ">= 0"]),
        (["--float-layers", "auto", "--max-drop", "inf"], ["--max-drop", "finite"]),
        (["--float-layers", "auto"], ["--float-layers auto", "target"]),
        (["--float-layers", " "], ["--float-layers", "empty"]),
        (["--db", "c.npz"], ["--db c.npz", "folder"]),
        (["--db", "nodb"], ["--db nodb", "no such"]),
        (["--db", "."], ["--db .", "not a tuning database"]),  # said after quantizing
        (["--db", "db", "--no-db"], ["--no-db", "--db"]),
        (["--target", "sparc"], ["sparc", "known targets"]),
        (["--scale", "0", "--mean", "0.5", "--std", "0.5"], ["--mean", "not a folder"]),
        (["--scale", "1"], ["--scale", "image folder", "not a folder"]),  # was ignored
        (["--layout", "NHWC"], ["--layout", "not a folder"]),
        (["--trials", "3"], ["unrecognized arguments", "--trials"]),  # argparse: one line too
    ],
)
def test_flags(work, extra, words):
    refused(work, compile_args(*extra), *words)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--scheme", "pow2"], ["--fp32", "--scheme"]),
        (["--report", "r.json"], ["--fp32", "--report"]),
        (["--float-layers", "auto", "--min-sqnr", "20"], ["--fp32", "--float-layers"]),
    ],
)
def test_fp32_refuses_quantization_flags(work, extra, words):
    refused(work, compile_args("--fp32", *extra, calib=None), *words)


def test_missing_output_flag(work):
    refused(work, ["compile", "m.onnx", "--calib", "c.npz"], "required", "-o")


# ---- the model file ----------------------------------------------------------------------
def test_missing_model(work):
    refused(work, compile_args(model="nope.onnx"), "nope.onnx", "no such model file")


def test_model_is_a_folder(work):
    (work / "d.onnx").mkdir()
    refused(work, compile_args(model="d.onnx"), "d.onnx", "folder")


def test_truncated_model(work):
    (work / "t.onnx").write_bytes(MODEL.read_bytes()[: MODEL.stat().st_size // 2])
    refused(work, compile_args(model="t.onnx"), "t.onnx", "ONNX")


def test_unsupported_operator(work):
    save_model(
        work / "celu.onnx",
        [helper.make_node("Celu", ["input"], ["y"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 28, 28])],
    )
    refused(work, compile_args(model="celu.onnx"), "celu.onnx", "Celu")


def test_dynamic_shape_needs_input_shape(work):
    model = onnx.load(MODEL)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(model, work / "dyn.onnx")
    refused(work, compile_args(model="dyn.onnx"), "input", "--input-shape input:Nx1x28x28")


def test_input_shape_for_unknown_input(work):
    refused(work, compile_args("--input-shape", "image:1x1x28x28"), "image", "input")


def test_gather_index_out_of_range(work):
    """TVM's build read past the table (zeros); ONNX Runtime refuses the index."""
    save_model(
        work / "gather.onnx",
        [helper.make_node("Gather", ["x", "idx"], ["y"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        {"idx": np.array([3, 1_000_000], np.int64)},
    )
    np.savez(work / "g.npz", x=np.ones((4, 16), np.float32))
    refused(work, compile_args(model="gather.onnx", calib="g.npz"), "Gather", "1000000", "range")


# ---- calibration and evaluation data -----------------------------------------------------
@pytest.mark.parametrize(
    "case, arrays, words",
    [
        ("empty", {"input": np.zeros((0, 1, 28, 28), np.float32)}, ["input", "no samples"]),
        ("nan", {"input": np.full((4, 1, 28, 28), np.nan, np.float32)}, ["input", "NaN"]),
        ("shape", {"input": np.zeros((4, 1, 32, 32), np.float32)}, ["input", "shape"]),
        ("name", {"image": np.zeros((4, 1, 28, 28), np.float32)}, ["input", "image"]),
        (
            "labels",  # 20 samples, 5 labels: a top-1 was printed, exit 0
            {"input": np.zeros((20, 1, 28, 28), np.float32), "labels": np.arange(5)},
            ["labels", "5", "20 samples"],
        ),
    ],
)
def test_bad_calibration_data(work, case, arrays, words):
    np.savez(work / f"{case}.npz", **arrays)
    refused(work, compile_args(calib=f"{case}.npz"), *words)


def test_eval_labels_do_not_match_the_samples(work):
    x = np.load(CALIB)["input"][:20]
    np.savez(work / "e.npz", input=x, labels=np.arange(5))
    refused(work, compile_args("--eval", "e.npz"), "e.npz", "labels")


def test_max_drop_needs_labels_before_calibrating(work):
    refused(
        work,
        compile_args("--float-layers", "auto", "--max-drop", "1"),
        "--max-drop",
        "labels",
    )


def test_missing_calib(work):
    refused(work, compile_args(calib="nope.npz"), "--calib nope.npz", "no such")


def test_image_folder_without_images(work):
    (work / "images").mkdir()
    (work / "images" / "notes.txt").write_text("not an image")
    args = compile_args("--mean", "0.1307", "--std", "0.3081", calib="images")
    refused(work, args, "images", "no images")


def test_image_folder_needs_preprocessing_flags(work):
    (work / "images").mkdir()
    refused(work, compile_args(calib="images"), "--mean", "--std")


# ---- pre-quantized models ----------------------------------------------------------------
@pytest.mark.parametrize(
    "params, words",
    [
        ({"scale": 0.0}, ["x_scale", "is 0", "> 0"]),
        ({"scale": -0.05}, ["x_scale", "-0.05"]),
        ({"scale": np.nan}, ["x_scale", "nan"]),
        ({"scale": np.inf}, ["x_scale", "inf"]),
        ({"weight_scale": [0.01, 0.0, 0.01, 0.01]}, ["w_scale", "[1]", "is 0"]),
    ],
)
def test_prequantized_bad_scale(work, params, words):
    qdq_model(work / "q.onnx", **params)
    refused(work, compile_args(model="q.onnx", calib=None), "q.onnx", *words)


def test_prequantized_with_calib(work):
    qdq_model(work / "q.onnx")
    tiny_calib(work / "t.npz")
    refused(work, compile_args(model="q.onnx", calib="t.npz"), "already quantized", "--calib")


def test_prequantized_report(work):
    """--report was accepted and no report written for a pre-quantized model."""
    qdq_model(work / "q.onnx")
    tiny_calib(work / "t.npz")
    proc = run_cli(
        *compile_args("--report", "r.json", "--eval", "t.npz", model="q.onnx", calib=None),
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr
    report = __import__("json").loads((work / "r.json").read_text())
    assert report["scheme"] == "pre-quantized" and report["integer_only"] is True
    assert report["output_sqnr_db"] > 20 and report["num_eval_samples"] == 8
    assert [lay["scale"] for lay in report["layers"]] == [np.float32(0.05), np.float32(0.1)]
    assert (work / "r.png").stat().st_size > 1000


def test_fp32_with_calib_says_it_is_not_used(work):
    """Success: the same command line with --fp32 builds the float model; a note says the
    calibration data is not used (the documented tune/compile --fp32 commands keep it)."""
    tiny_conv_model(work / "t.onnx")
    tiny_calib(work / "t.npz")
    proc = run_cli(*compile_args("--fp32", model="t.onnx", calib="t.npz", out="f.so"), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "note: --fp32: --calib not used" in proc.stderr and "Traceback" not in proc.stderr
    assert (work / "f.so").is_file() and (work / "f.so.json").is_file()
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]  # no temporary left


def test_damaged_database_is_read_not_rewritten(work):
    """compile --db (a read) dropped a cut record line and rewrote the file, silently: it now
    names the line, compiles with the good records, and leaves the file as it is."""
    from tvm_intq.schedules import database as D

    db = work / "db"
    shutil.copytree(D.shipped_databases("host")[-1], db)
    records = db / D.RECORDS
    data = records.read_bytes()
    records.write_bytes(data[: len(data) - len(data.splitlines()[-1]) // 2 - 1])  # cut in half
    lines = len(records.read_bytes().splitlines())
    before = records.read_bytes()
    tiny_conv_model(work / "t.onnx")
    proc = run_cli(*compile_args("--db", "db", "--fp32", model="t.onnx", calib=None), cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert f"database_tuning_record.json: line {lines} damaged (cut short" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert records.read_bytes() == before
