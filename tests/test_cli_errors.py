"""Bad input ends with one clear line naming the problem, a non-zero exit and no traceback."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tvm_intq.demo import bundled

pytestmark = pytest.mark.integration  # whole models, boards or processes

MODEL = bundled("mnist_cnn.onnx")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "tvm_intq.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(proc, *words):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tvm-intq: error: ")
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture
def calib(tmp_path):
    x = np.load(bundled("calib.npz"))["input"][:8]
    path = tmp_path / "calib.npz"
    np.savez(path, input=x)
    return path


def compile_args(model, calib, tmp_path, *extra):
    return ("compile", model, "--calib", calib, "-o", tmp_path / "m.so", "--no-progress", *extra)


def test_missing_model_file(tmp_path, calib):
    assert_one_line_error(
        run_cli(*compile_args(tmp_path / "nope.onnx", calib, tmp_path)),
        "nope.onnx",
        "no such model file",
    )


def test_truncated_model(tmp_path, calib):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(MODEL.read_bytes()[: MODEL.stat().st_size // 2])
    assert_one_line_error(run_cli(*compile_args(bad, calib, tmp_path)), "truncated.onnx", "ONNX")


def test_unsupported_operator(tmp_path, calib):
    node = helper.make_node("Celu", ["input"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 28, 28])],
    )
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert_one_line_error(run_cli(*compile_args(path, calib, tmp_path)), "celu.onnx", "Celu")


def test_dynamic_shape_needs_input_shape(tmp_path, calib):
    model = onnx.load(MODEL)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, path)
    assert_one_line_error(
        run_cli(*compile_args(path, calib, tmp_path)), "input", "--input-shape input:Nx1x28x28"
    )


def test_input_shape_for_unknown_input(tmp_path, calib):
    proc = run_cli(*compile_args(MODEL, calib, tmp_path, "--input-shape", "image:1x1x28x28"))
    assert_one_line_error(proc, "image", "input")


@pytest.mark.parametrize(
    "case, arrays, words",
    [
        ("empty", {"input": np.zeros((0, 1, 28, 28), np.float32)}, ["input", "no samples"]),
        ("nan", {"input": np.full((4, 1, 28, 28), np.nan, np.float32)}, ["input", "NaN"]),
        ("shape", {"input": np.zeros((4, 1, 32, 32), np.float32)}, ["input", "shape"]),
        ("name", {"image": np.zeros((4, 1, 28, 28), np.float32)}, ["input", "image"]),
    ],
)
def test_bad_calibration_data(tmp_path, case, arrays, words):
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    assert_one_line_error(run_cli(*compile_args(MODEL, path, tmp_path)), *words)


def test_image_folder_without_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    proc = run_cli(
        "compile",
        MODEL,
        "--calib",
        folder,
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
        "-o",
        tmp_path / "m.so",
        "--no-progress",
    )
    assert_one_line_error(proc, "images", "no images")


def test_image_folder_needs_preprocessing_flags(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    assert_one_line_error(
        run_cli("compile", MODEL, "--calib", folder, "-o", tmp_path / "m.so"), "--mean", "--std"
    )


def test_run_wrong_input(tmp_path):
    lib = tmp_path / "missing.so"
    assert_one_line_error(
        run_cli("run", lib, "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz"), "missing.so"
    )
