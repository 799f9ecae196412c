"""A compiled library on disk: the sidecar ``compile`` writes beside it, and running it on
the host."""

from __future__ import annotations

import json
from pathlib import Path

import tvm

from tvm_intq.calibration import load_npz
from tvm_intq.compiler.runner import Runner, check_inputs, run_all
from tvm_intq.errors import IntqError


def sidecar_path(library) -> Path:
    """Where ``compile`` writes a library's inputs, outputs and target (``model.so.json``)."""
    return Path(str(library) + ".json")


def read_sidecar(library) -> dict:
    library = Path(library)
    if not library.is_file():
        raise IntqError(f"{library}: no such library")
    meta = sidecar_path(library)
    if not meta.is_file():
        raise IntqError(
            f"{library}: {meta.name} is missing; compile the model with 'tvm-intq compile'"
        )
    return json.loads(meta.read_text())


def run_library(library, inputs_path) -> dict:
    """Run a host library on every sample of an .npz: ``{output name: array}``, samples on
    axis 0."""
    meta = read_sidecar(library)
    if meta["target"] != "host":
        raise IntqError(f"{library} was built for {meta['target']}; run it on such a board")
    shapes = {k: tuple(v) for k, v in meta["inputs"].items()}
    samples = load_npz(inputs_path, shapes, meta["input_dtypes"])
    check_inputs(samples, shapes, f"--input {inputs_path}")
    runner = Runner(tvm.runtime.load_module(str(library)), list(shapes))
    outputs = run_all(runner, samples, next(iter(shapes.values()))[0])
    return dict(zip(meta["outputs"], outputs))
