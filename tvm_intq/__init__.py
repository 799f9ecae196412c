"""tvm-intq: int8 post-training quantization and deployment for Apache TVM.

Float ONNX (or Relax) model + a little unlabelled calibration data -> pure-integer TVM program
(hybrid asymmetric quantization: asymmetric per-tensor activations, symmetric per-channel
weights, one integer multiply/add/shift per output channel, lookup tables for nonlinearities).

Where each concern lives (data flows down this list, never up):

    core/         the papers' integer equations, schemes, metrics (numpy, no TVM)
    calibration/  sample sets, calibrators (numpy, no TVM)
    relay_passes/ Relax passes: canonicalize, annotate, fold to integer, checks
    targets/      target definitions, boards, RPC, emulated counting, disassembly
    schedules/    int8 layouts, tensor intrinsics, default schedules, tuning, databases
    frontends/    ONNX / TFLite / PyTorch (torch.export) / pre-quantized models -> Relax
    evaluation/   running programs on the host, numpy reference, error per layer
    compiler/     the flow's steps (prepare, calibrate, lower, build), the intq pipeline
    search/       float-layer and scheme searches
    api.py        the compile job in one call
    export/, deploy/, qat/   QDQ export; libraries, board benches; quantization-aware training
    reports/      JSON, Markdown, PNG and console tables from plain data
    cli/          the ``tvm-intq`` verbs

Importing this package loads no TVM: the names below are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import importlib.util

from tvm_intq.errors import IntqError

_LAZY = {
    "QuantConfig": "tvm_intq.core.config",
    "prepare": "tvm_intq.compiler.steps",
    "calibrate": "tvm_intq.compiler.steps",
    "lower": "tvm_intq.compiler.steps",
    "quantize": "tvm_intq.compiler.steps",
    "build": "tvm_intq.compiler.steps",
    "compile_onnx": "tvm_intq.api",
}

__all__ = ["IntqError", *_LAZY, "calibration", "relay_passes", "schedules", "targets"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_") and importlib.util.find_spec(f"tvm_intq.{name}") is not None:
        return importlib.import_module(f"tvm_intq.{name}")  # a subpackage, e.g. tvm_intq.search
    raise AttributeError(f"module 'tvm_intq' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
