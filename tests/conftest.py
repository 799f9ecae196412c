"""Shared test helpers.

``require_tool(name)``: tests that need an external program (cross compilers, qemu, ...)
call this first. Locally a missing tool skips the test with the reason; under CI
(environment variable ``CI=true``, set by ``.ci/run``) it fails the test, because ``make``
installs every tool the tests need and a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest


def require_tool(name: str) -> str:
    """Path of the program ``name`` on PATH; skip (locally) or fail (CI=true) if absent."""
    path = shutil.which(name)
    if path:
        return path
    missing(f"{name} not found on PATH (make system-deps installs it)")


def missing(reason: str):
    """Skip the test with ``reason`` locally; fail it under CI=true, where ``make`` has
    installed and built everything the tests need."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true a missing tool is a failure, not a skip")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def bundled_integer():
    """The bundled model quantized with its calibration set (the integer Relax module), once
    per session: the tests of several targets build it (~15 s to quantize)."""
    from tvm_intq import api
    from tvm_intq.calibration import load_npz
    from tvm_intq.demo import bundled
    from tvm_intq.frontends import import_model

    model = bundled("mnist_cnn.onnx")
    _, info = import_model(model)
    calib = load_npz(bundled("calib.npz"), info.inputs)
    return api.compile_onnx(model, calib, api.QuantConfig(progress=False), "host").integer


def three_conv_model(rng, bias_mean: float = 0.0):
    """conv3x3+relu -> conv1x1 -> tanh -> conv1x1 on a 2x3x6x6 input, weights drawn from
    ``rng`` (first bias around ``bias_mean``), imported and prepared: a model small enough to
    search schemes and float layers over in seconds."""
    from onnx import TensorProto, helper, numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    import tvm_intq

    inits = {
        "w1": rng.normal(0, 0.4, (8, 3, 3, 3)),
        "b1": rng.normal(bias_mean, 0.3, 8),
        "w2": rng.normal(0, 0.3, (8, 8, 1, 1)),
        "b2": rng.normal(0, 0.2, 8),
        "w3": rng.normal(0, 0.3, (4, 8, 1, 1)),
        "b3": rng.normal(0, 0.2, 4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Tanh", ["c2"], ["t2"]),
        helper.make_node("Conv", ["t2", "w3", "b3"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return tvm_intq.prepare(
        from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    )


def run_vm(mod, x, extra=()):
    """Build ``mod`` for the host and run its main on ``x`` (and ``extra`` inputs)."""
    import tvm
    from tvm import relax

    import tvm_intq

    vm = relax.VirtualMachine(tvm_intq.build(mod), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x), *[tvm.runtime.tensor(e) for e in extra]).numpy()
