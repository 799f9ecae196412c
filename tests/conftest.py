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
    reason = f"{name} not found on PATH (make system-deps installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; under CI=true a missing tool is a failure, not a skip")
    pytest.skip(reason)
