"""Shared test helpers.

``require_tool(name)``: tests that need an external program (cross compilers, qemu, ...)
call this first. Locally a missing tool skips the test with the reason; under CI
(environment variable ``CI=true``, set by ``.ci/run``) it fails the test, because ``make``
installs every tool the tests need and a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil

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
    from tvm_intq.frontend import import_onnx

    model = bundled("mnist_cnn.onnx")
    _, info = import_onnx(model)
    calib = load_npz(bundled("calib.npz"), info.inputs)
    return api.compile_onnx(model, calib, api.QuantConfig(progress=False), "host").integer
