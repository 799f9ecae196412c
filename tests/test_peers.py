"""The peers (ONNX Runtime, LiteRT) counted on the emulated ARM core like our libraries:
the environment builds, counts are deterministic and bounded by the markers, outputs are the
model's, and llvm-mca models the blocks they executed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import missing

from tvm_intq.demo import bundled
from tvm_intq.errors import IntqError
from tvm_intq.targets import peers
from tvm_intq.targets.mca import executed_mnemonics

pytestmark = pytest.mark.integration  # whole models, boards or processes

ROOT = Path(__file__).resolve().parents[1]
TFLITE_INT8 = ROOT / "bench" / "models" / "mnist_cnn.int8.tflite"


@pytest.fixture(scope="module")
def env():
    """The peers' environment, built by `make boards` (a second run of the build script must
    find it up to date: it is cached, and `make boards` runs it every time)."""
    try:
        peers._tools()
    except IntqError as err:
        missing(str(err))
    proc = subprocess.run(
        ["bash", str(ROOT / "targets/boards/build_peers.sh")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "peers up to date" in proc.stderr
    return peers.peers_dir()


@pytest.fixture(scope="module")
def digit():
    return np.load(bundled("heldout.npz"))["input"][:1]


def test_environment_has_the_host_onnxruntime_and_an_aarch64_python(env):
    import onnxruntime

    versions = (env / "VERSIONS").read_text()
    assert f"wheel onnxruntime-{onnxruntime.__version__}-cp311-cp311-manylinux" in versions
    assert "aarch64.whl" in versions and "deb python3.11-minimal:arm64=" in versions
    assert (env / "sysroot/usr/bin/python3.11").read_bytes()[18] == 183  # EM_AARCH64


def test_onnxruntime_count_is_deterministic_marker_bounded_and_computes_the_model(env, digit):
    import onnxruntime as ort

    model = bundled("mnist_cnn.onnx")
    count = peers.peer_instructions(model, [digit], "onnxruntime", "neoverse-n1")
    # the counted calls of one run agree within 1 % (the allocators' state differs a little
    # from call to call: measured, within 0.5 %)
    assert len(count.per_call) == peers.CALLS
    assert max(count.per_call) - min(count.per_call) < 1e-2 * count.instructions
    # an inference of this model is about a million instructions; the markers' own cost, and
    # so the error of taking it off, is a few thousand at most
    assert 3e5 < count.instructions < 1e7 and 0 < count.marker < 1e4
    # the whole process (Python start-up, imports, session creation) is far more: the markers
    # cut it out
    assert count.whole_process > 100 * count.instructions
    # a second process counts the same to the instruction
    again = peers.peer_instructions(model, [digit], "onnxruntime", "neoverse-n1")
    assert again.per_call == count.per_call
    host = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        count.outputs[0], host.run(None, {"input": digit})[0], rtol=1e-4, atol=1e-4
    )


def test_litert_int8_block_profile_covers_the_inference_and_llvm_mca_models_it(env, digit):
    import onnxruntime as ort

    count = peers.peer_instructions(TFLITE_INT8, [digit], "litert", "neoverse-n1", blocks=True)
    assert max(count.per_call) - min(count.per_call) < 1e-2 * count.instructions
    # the int8 model's digit is the float model's
    host = ort.InferenceSession(str(bundled("mnist_cnn.onnx")), providers=["CPUExecutionProvider"])
    assert count.outputs[0].argmax() == host.run(None, {"input": digit})[0].argmax()
    # the blocks that ran from the first marker on are the counted calls and the markers
    in_blocks = sum(n * e for blocks in count.blocks.values() for (_, n), e in blocks.items())
    in_blocks += count.unmapped
    markers = count.marker * (peers.EMPTY_REGIONS + peers.CALLS) / peers.CALLS
    assert in_blocks == pytest.approx(count.instructions + markers, rel=0.02)
    # XNNPACK's kernels are inside LiteRT's extension module
    assert any("ai_edge_litert" in lib for lib in count.blocks)
    # on Neoverse-N1 (dotprod) XNNPACK's int8 convolutions are sdot: at least one per 16 of
    # the model's 2,282,400 multiply-accumulates
    mix = executed_mnemonics(count.blocks, "neoverse-n1")
    assert mix["sdot"] >= 2_282_400 / 16 and "smmla" not in mix
    est = peers.peer_mca_cycles(count, "neoverse-n1")
    assert est["modelled"] > 0.95
    assert 0.1 * count.instructions < est["total"] < 3 * count.instructions
    assert sum(est["libraries"].values()) == pytest.approx(est["total"])
    # by function (stripped library: .eh_frame functions, runs of assembly): the functions
    # share out the library's instructions, and the most executed is XNNPACK's hand-written
    # sdot GEMM microkernel
    functions = peers.function_profile(count, "litert_common")
    lib = next(f for f in count.blocks if "litert_common" in f)
    in_lib = sum(n * e for (_, n), e in count.blocks[lib].items())
    assert sum(f["instructions"] for f in functions) == pytest.approx(in_lib)
    top = functions[0]
    assert top["assembly"] and top["mnemonics"]["sdot"] > 0.5 * mix["sdot"]


def test_peer_cpu_follows_the_target():
    assert peers.peer_cpu("aarch64") == "neoverse-n1"
    assert peers.peer_cpu("aarch64-i8mm") == "neoverse-n2"
    with pytest.raises(IntqError, match="aarch64"):
        peers.peer_cpu("riscv64")
    assert (
        peers.runtime_for("m.onnx") == "onnxruntime" and peers.runtime_for("m.tflite") == "litert"
    )
    assert peers.runtime_for("m.so") is None


def test_wrong_model_for_the_runtime_is_reported(env, digit):
    with pytest.raises(IntqError, match="mnist_cnn.onnx in litert"):
        peers.peer_instructions(bundled("mnist_cnn.onnx"), [digit], "litert", "neoverse-n1")
