"""A compiled library on disk: written whole with its sidecar (:mod:`.sidecar`), checked, and
run on the host."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm

from tvm_intq.calibration import load_npz
from tvm_intq.compiler.runner import Runner, check_inputs, run_all
from tvm_intq.deploy.sidecar import check_library, library_fields, read_sidecar, sidecar_path
from tvm_intq.errors import IntqError
from tvm_intq.files import atomic_path
from tvm_intq.reports.files import write_json
from tvm_intq.targets.rpc import error_line

__all__ = ["check_library", "read_sidecar", "run_library", "save_library", "sidecar_path"]


def target_triple(spec) -> str:
    """The LLVM triple a library for ``spec`` is built for (the host's when the target names
    none)."""
    return spec.target_dict().get("mtriple") or str(tvm.target.codegen.llvm_get_system_triple())


def save_library(executable, spec, path, meta: dict) -> Path:
    """Link ``executable`` into the library ``path`` and write its sidecar (``meta`` plus the
    library's size, SHA-256 and target triple). The library is linked into a temporary file
    beside ``path`` and renamed over it last, after the sidecar: an interrupted link leaves
    the old library (or none), never an empty or partial one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            spec.export(executable, tmp)
        except RuntimeError as err:  # TVM's export: the compiler or linker failed
            raise IntqError(f"{path}: linking the library failed: {error_line(err)}") from None
        write_json({**meta, **library_fields(tmp, target_triple(spec))}, sidecar_path(path))
    return path


def run_library(library, inputs_path) -> dict:
    """Run a host library on every sample of an .npz: ``{output name: array}``, samples on
    axis 0. The library is verified against its sidecar before it is loaded."""
    meta = check_library(library)
    shapes = {k: tuple(v) for k, v in meta["inputs"].items()}
    samples = load_npz(inputs_path, shapes, meta["input_dtypes"])
    check_inputs(samples, shapes, f"--input {inputs_path}")
    runner = Runner(tvm.runtime.load_module(str(library)), list(shapes))
    outputs = run_all(runner, samples, next(iter(shapes.values()))[0])
    return dict(zip(meta["outputs"], outputs))


def save_outputs(outputs: dict, path) -> Path:
    """``run``'s outputs as an ``.npz`` at exactly ``path`` (numpy would add ``.npz`` to a
    name without it), written whole."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **outputs)
    return path
