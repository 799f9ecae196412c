"""Run a compiled Relax program over a whole sample set, batch by batch."""

from __future__ import annotations

import os

import numpy as np
import tvm
import tvm_ffi
from tqdm import tqdm
from tvm import relax

from tvm_intq.calibration import SampleSet
from tvm_intq.errors import IntqError


def set_threads(threads: int) -> None:
    """Run TVM's CPU kernels of this process on ``threads`` threads (TVM's default: half the
    CPUs, the calling thread one of them).

    TVM reads ``TVM_NUM_THREADS`` at every parallel launch and when its thread pool starts:
    at 1 every parallel loop runs inline on the calling thread and no pool is ever made (TVM's
    ``runtime.config_threadpool(mode, 1)`` would still start the pool's workers, each spinning
    a while at start, and take a launch through the pool for every kernel). For more threads,
    the pool (started now, if it is not yet) is told the number too."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    os.environ["TVM_NUM_THREADS"] = str(threads)
    if threads > 1:
        tvm.get_global_func("runtime.config_threadpool")(1, threads)  # 1: kBig, all cores here


class Runner:
    """A Relax VM over a compiled executable (or a loaded library) on one device;
    ``threads``: see :func:`set_threads` (None: TVM's default, or ``TVM_NUM_THREADS``)."""

    def __init__(self, executable, input_names: list[str], device=None, threads: int | None = None):
        if threads is not None:
            set_threads(threads)
        self.vm = relax.VirtualMachine(executable, device or tvm.cpu())
        self.input_names = list(input_names)
        self._main = self.vm["main"]  # a lookup per call: 1.5 us
        #: {input name: (aligned array, the TVM tensor over it)}, reused from call to call
        self._staging: dict[str, tuple[np.ndarray, tvm.runtime.Tensor]] = {}

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        """Outputs of ``main`` for one batch, a tuple output flattened to a list."""
        return _flatten(self._main(*(self._input(n, feeds[n]) for n in self.input_names)))

    def _input(self, name: str, x) -> tvm.runtime.Tensor:
        """``x`` through DLPack when TVM's kernels can read it in place (contiguous, 64-byte
        aligned), else copied into this input's staging buffer: a fresh aligned buffer per
        call cost 9 us of the unseen CNN's 160 us, the copy into a kept one 1.6 us
        (``tvm.runtime.tensor``'s copy: 19 us for the bundled model's 3 KB input)."""
        x = np.asarray(x)
        if x.flags.c_contiguous and x.ctypes.data % 64 == 0:
            return tvm_ffi.from_dlpack(x, require_alignment=64)
        staged = self._staging.get(name)
        if staged is None or staged[0].shape != x.shape or staged[0].dtype != x.dtype:
            array = _aligned_empty(x.shape, x.dtype)
            staged = self._staging[name] = (array, tvm_ffi.from_dlpack(array, require_alignment=64))
        np.copyto(staged[0], x)
        return staged[1]


def _aligned_empty(shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def _flatten(value) -> list[np.ndarray]:
    if isinstance(value, tvm.runtime.Tensor):
        return [np.array(np.from_dlpack(value))]  # a copy: the VM's buffer is not ours to keep
    return [a for v in value for a in _flatten(v)]


def check_inputs(samples: SampleSet, shapes: dict, where: str):
    """Each model input is in ``samples`` with the model's per-sample shape."""
    for name, shape in shapes.items():
        if name not in samples.names:
            raise IntqError(
                f"{where}: no array for model input '{name}' "
                f"(found: {', '.join(samples.names) or 'none'})"
            )
        got = samples.sample_shape(name)
        if tuple(got) != tuple(shape[1:]):
            raise IntqError(
                f"{where}: input '{name}' samples have shape {list(got)}, the model "
                f"takes {list(shape[1:])} per sample (model input {list(shape)})"
            )


def run_all(
    runner: Runner, samples: SampleSet, batch_size: int, progress: bool = False, desc: str = "run"
) -> list[np.ndarray]:
    """Every output over all samples, concatenated on axis 0 (the batch axis)."""
    outputs: list[list[np.ndarray]] = []
    with tqdm(total=samples.num_samples, desc=desc, disable=not progress, unit="sample") as bar:
        for feeds, valid in samples.batches(batch_size):
            for i, out in enumerate(runner(feeds)):
                if len(outputs) <= i:
                    outputs.append([])
                outputs[i].append(out[:valid])
            bar.update(valid)
    return [np.concatenate(parts, axis=0) for parts in outputs]


def latency_ms(runner: Runner, feeds: dict, number: int = 10, repeat: int = 5) -> dict:
    """Median and p90 wall time of one call of ``main`` (after a warm-up call), in ms."""
    args = [runner._input(n, feeds[n]) for n in runner.input_names]
    runner.vm["main"](*args)
    timer = runner.vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    results = np.asarray(timer(*args).results) * 1e3
    return {"p50": float(np.median(results)), "p90": float(np.percentile(results, 90))}
