"""tvm-intq against ONNX Runtime and LiteRT on the emulated ARM core (tvm_intq/deploy/
peer_bench.py, ``tvm-intq bench --target aarch64 --peers``): which peer runs which model, the
figures' shape in --json, the comparison, the MACs the efficiency figure divides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import missing

from tvm_intq.deploy import peer_bench
from tvm_intq.errors import IntqError
from tvm_intq.reports.speed import peers_markdown

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tvm_intq" / "data"
LITERT = {
    "litert-fp32": ROOT / "bench" / "models" / "mnist_cnn.tflite",
    "litert-int8": ROOT / "bench" / "models" / "mnist_cnn.int8.tflite",
}


def cli(*args, timeout=3600):
    return subprocess.run(
        [sys.executable, "-m", "tvm_intq.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def test_peer_model_flag_names_a_peer_and_a_file():
    assert peer_bench.parse_peer_models([f"litert-int8={LITERT['litert-int8']}"]) == {
        "litert-int8": LITERT["litert-int8"]
    }
    with pytest.raises(IntqError, match="NAME in onnxruntime-int8"):
        peer_bench.parse_peer_models(["tvm-intq-int8=x.tflite"])
    with pytest.raises(IntqError, match="no such file"):
        peer_bench.parse_peer_models(["litert-fp32=/nonexistent.tflite"])


def test_peers_need_the_arm_core_and_no_key():
    model, calib = DATA / "mnist_cnn.onnx", DATA / "calib.npz"
    proc = cli("bench", model, "--calib", calib, "--target", "riscv64", "--peers")
    assert proc.returncode != 0 and "target riscv64 has no peer" in proc.stderr
    proc = cli("bench", model, "--calib", calib, "--target", "aarch64", "--key", "k", "--peers")
    assert proc.returncode != 0 and "use it without --key" in proc.stderr


def test_each_peer_runs_its_own_format_the_others_get_a_note(tmp_path):
    from tvm_intq import api
    from tvm_intq.calibration import load_npz

    calib, _ = api.split_holdout(load_npz(DATA / "calib.npz", {"input": (1, 1, 28, 28)}))
    models, notes = peer_bench.peer_models(DATA / "mnist_cnn.onnx", calib, tmp_path)
    assert models["onnxruntime-fp32"] == DATA / "mnist_cnn.onnx"
    assert set(notes) == {"litert-int8", "litert-fp32"}
    assert "litert does not load mnist_cnn.onnx" in notes["litert-fp32"]
    # ONNX Runtime int8 is quantize_static's QDQ model: int8 weights per channel
    q = onnx.load(str(models["onnxruntime-int8"]))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # a model given for a peer is taken as it is
    models, notes = peer_bench.peer_models(DATA / "mnist_cnn.onnx", calib, tmp_path, LITERT)
    assert models["litert-int8"] == LITERT["litert-int8"] and not notes
    # a .tflite model: LiteRT runs it, ONNX Runtime does not
    models, notes = peer_bench.peer_models(
        LITERT["litert-fp32"], calib, tmp_path, {"litert-int8": LITERT["litert-int8"]}
    )
    assert models["litert-fp32"] == LITERT["litert-fp32"]
    assert set(notes) == {"onnxruntime-int8", "onnxruntime-fp32"}


def test_multiply_accumulates_are_the_models_convolutions(bundled_integer):
    # computed independently from the ONNX graph: per conv, output elements x weight
    # elements per output channel; per Gemm/MatMul, output elements x inner dimension
    from onnx import shape_inference

    m = shape_inference.infer_shapes(onnx.load(str(DATA / "mnist_cnn.onnx")))
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*m.graph.value_info, *m.graph.output]
    }
    weights = {i.name: list(i.dims) for i in m.graph.initializer}
    conv = sum(
        int(np.prod(shapes[n.output[0]])) * int(np.prod(weights[n.input[1]][1:]))
        for n in m.graph.node
        if n.op_type == "Conv"
    )
    macs = peer_bench.multiply_accumulates(bundled_integer)
    assert macs["conv"] == conv == 2_281_440
    assert macs["dense"] == 96 * 10


def _config(instructions, cycles):
    return {"instructions": instructions, "mca_cycles": {"neoverse-n1": cycles}}


def test_comparison_takes_the_better_peer_int8_and_the_table_says_it():
    configs = {
        "tvm-intq-int8": _config(1000, 400),
        "tvm-fp32": _config(4000, 1600),
        "onnxruntime-int8": _config(1200, 600),
        "litert-int8": _config(600, 300),
    }
    cmp = peer_bench.compare(configs, "neoverse-n1")
    assert cmp == {"best_peer": "litert-int8", "instructions": 0.6, "mca_cycles": 0.75}
    fig = {
        "cpu": "neoverse-n1",
        "peer_cores": ["neoverse-n1"],
        "configs": configs,
        "against_best_peer": {"neoverse-n1": cmp},
        "peer_notes": {"litert-fp32": "litert does not load m.onnx"},
    }
    md = peers_markdown(fig)
    assert "| litert-int8 | 600 | - | 300 | 0.60x | 0.75x |" in md
    assert "litert-fp32 left out: litert does not load m.onnx" in md


def test_conv_efficiency_divides_conv_macs_by_conv_kernel_instructions():
    kernels = {"conv2d_packed_int8_requant": 900.0, "depthwise_int8_x": 100.0, "unpack": 5e5}
    eff = peer_bench.conv_efficiency(kernels, {"conv": 8000, "dense": 10}, 16)
    assert eff["instructions"] == 1000 and eff["macs_per_instruction"] == 8.0
    assert eff["peak_fraction"] == 0.5


@pytest.mark.integration
def test_cli_peers_json_has_every_configuration_counted_on_the_same_core(tmp_path):
    from tvm_intq.targets import peers

    try:
        peers._tools()
    except IntqError as err:
        missing(str(err))
    out = tmp_path / "fig.json"
    proc = cli(
        "bench", DATA / "mnist_cnn.onnx", "--calib", DATA / "calib.npz", "--target", "aarch64",
        "--peers", *(f"--peer-model={k}={v}" for k, v in LITERT.items()),
        "--json", out, "--out", tmp_path / "libs",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert list(data["configs"]) == list(peer_bench.CONFIGS)
    for name, fig in data["configs"].items():
        assert isinstance(fig["instructions"], int) and fig["instructions"] > 1e5, name
        assert isinstance(fig["mca_cycles"]["neoverse-n1"], int), name
        assert fig["mca_cycles"]["neoverse-n1"] > 0.1 * fig["instructions"], name
    # ours: the whole call (runtime included), not only the kernels
    ours = data["configs"]["tvm-intq-int8"]
    assert ours["mca_cycles"]["neoverse-n1"] > ours["mca_kernel_cycles"]["neoverse-n1"]
    assert ours["instructions"] == data["programs"]["int8"]["instructions"]
    # the int8 configurations use sdot on the Neoverse-N1 (dotprod, no i8mm)
    for name in ("tvm-intq-int8", "onnxruntime-int8", "litert-int8"):
        assert data["configs"][name]["dot_instructions"].get("sdot", 0) > 0, name
    assert data["cpu"] == "neoverse-n1" and not data["peer_notes"]
    assert "Against ONNX Runtime and LiteRT on the same emulated core" in proc.stdout
