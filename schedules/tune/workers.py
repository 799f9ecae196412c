"""What runs in MetaSchedule's build and run worker processes, and what their results mean.

A build worker compiles a candidate (:func:`build_kernel`) and, for a board, links it with the
target's cross compiler (:func:`export_kernel`); a run worker measures it with buffers of
:func:`candidate_input` values. A result whose error starts with :data:`NOT_MEASURED` is no
measurement (its board was lost): it is not recorded, and a resumed tune measures it again.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import numpy as np
from tvm.driver import build as tvm_build
from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

from tvm_intq.targets import get_target

#: Start of the error message of a runner result that is no measurement.
NOT_MEASURED = "not measured: "
#: MetaSchedule stores failed candidates with run_secs 1e10.
INVALID_SECONDS = 1e9


def recorded_seconds(result) -> list[float] | None:
    """What a runner result records: its seconds, MetaSchedule's 1e10 for a candidate that
    failed, None for no measurement (:data:`NOT_MEASURED`)."""
    if result.error_msg is not None and str(result.error_msg).startswith(NOT_MEASURED):
        return None
    if result.error_msg is None and result.run_secs:
        return [float(x) for x in result.run_secs]
    return [1e10]


def ignore_sigint() -> None:
    """Build/run worker initializer: a Ctrl-C in the terminal reaches the whole process group,
    and a running worker should finish its job rather than die with a traceback (one still
    starting up can die anyway: that batch is not recorded, see ``CommitRecords``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def measuring_worker(threads: int | None) -> None:
    """Run worker initializer: :func:`ignore_sigint`, and the thread count candidates run
    with (TVM reads ``TVM_NUM_THREADS`` when the worker's thread pool starts)."""
    ignore_sigint()
    if threads is not None:
        os.environ["TVM_NUM_THREADS"] = str(threads)


def candidate_input(shape, dtype, rng) -> np.ndarray:
    """Values for one buffer of a candidate kernel. Small positive integers: values do not
    change what a kernel does (no data-dependent control flow), shift amounts must stay below
    the bit width, and a kernel that divides by a tensor (a Div of integer tensors) must not
    divide by zero (SIGFPE kills the process timing it)."""
    dtype = np.dtype(str(dtype))
    shape = tuple(int(d) for d in shape)
    return (rng.integers(1, 9, shape) if dtype.kind in "iub" else rng.random(shape)).astype(dtype)


def local_arguments(device, args_info, alloc_repeat):
    """LocalRunner's ``f_alloc_argument``: :func:`candidate_input` values. TVM's default fills
    every buffer with values of the whole range: a lookup kernel's table offsets then index
    far past its table (the index clip is left out when the compiled offsets keep it inside)
    and the measuring worker dies."""
    rng = np.random.default_rng(0)

    def fill(tensor):
        tensor.copyfrom(candidate_input(tensor.shape, tensor.dtype, rng))

    return alloc_argument_common(fill, device, args_info, alloc_repeat)


def export_kernel(target_name: str, rt_mod) -> str:
    """Build-worker export for a board: the kernel linked into a shared library with the
    target's cross compiler (MetaSchedule's default writes a .tar, which a board could only
    load with a compiler of its own)."""
    path = Path(tempfile.mkdtemp()) / "tvm_tmp_mod.so"
    get_target(target_name).export(rt_mod, path)
    return str(path)


def build_kernel(mod, target, _params):
    """MetaSchedule's default build without its ``import tvm.s_tir.tensor_intrin`` (tens of
    seconds per build worker, and a new worker per batch): the candidates arrive tensorized."""
    return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)
