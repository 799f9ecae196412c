"""Kernels too small to split run on the calling thread: no thread-pool hand-off for them.

A ``parallel`` loop (our default schedules, MetaSchedule's records) compiles to
``TVMBackendParallelLaunch``: with more than one TVM thread, every call hands tasks to the
pool's workers and waits for the last one. That costs microseconds on an idle machine and a
scheduler time slice on a busy one, whenever a worker is not running at that moment (issue
18: the bundled model at ``TVM_NUM_THREADS=2`` beside three CPU hogs, a 15 us sum kernel
took 10.6 ms per call at the median, a 16 us max-pool 3.7 ms; on one thread both run inline).
ONNX Runtime splits an op only when its cost covers the hand-off (Eigen's cost model: a
second thread only for ~200k cycles of work); this is the same rule at compile time.

The work of a kernel is counted on the kernel as fusion leaves it, before any schedule:
there every loop is a plain loop, so the count is the kernel's scalar iterations (every
store, reduction steps included), whatever the schedule does later (a tensorized loop nest
hides its intrinsic's lanes). Measured on this project's kernels (1 thread, AVX2 host):
0.06-0.16 ns per iteration for convs, ~0.5 ns for pools and pads; with VNNI less. Below
:data:`MIN_SPLIT_ITERATIONS` (about 20-500 us of work, depending on the kernel kind) the
parallel loops of the scheduled kernel become serial loops: the same arithmetic in the
same order per iteration, so outputs do not change. The pass runs after the tuning
database is applied; records are keyed by the unscheduled kernel, so they still replay.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx

#: Scalar iterations below which a kernel is not split across threads.
MIN_SPLIT_ITERATIONS = 1 << 20


def scalar_iterations(stmt) -> int:
    """Stores executed by ``stmt`` (product of the extents of the loops around each store)."""
    total = 0

    def walk(s, times):
        nonlocal total
        if isinstance(s, tirx.For):
            walk(s.body, times * int(s.extent) if isinstance(s.extent, tirx.IntImm) else times)
        elif isinstance(s, (tirx.BufferStore, tirx.Evaluate)):
            total += times
        elif isinstance(s, tirx.SeqStmt):
            for part in s.seq:
                walk(part, times)
        elif isinstance(s, s_tir.SBlockRealize):
            walk(s.block, times)
        elif isinstance(s, s_tir.SBlock):
            if s.init is not None:  # once per output element: on the first reduction step
                steps = 1
                for iv in s.iter_vars:
                    if iv.iter_type == tirx.IterVar.CommReduce and isinstance(
                        iv.dom.extent, tirx.IntImm
                    ):
                        steps *= int(iv.dom.extent)
                walk(s.init, max(1, times // steps))
            walk(s.body, times)
        elif isinstance(s, tirx.IfThenElse):
            walk(s.then_case, times)
            if s.else_case is not None:
                walk(s.else_case, times)
        elif getattr(s, "body", None) is not None:  # let, attr, buffer declarations
            walk(s.body, times)

    walk(stmt, 1)
    return total


def _has_parallel(func: tirx.PrimFunc) -> bool:
    found = []
    tvm_ffi.structural_walk(
        func.body,
        [(tirx.For, lambda s: found.append(1) if s.kind == tirx.ForKind.PARALLEL else None)],
    )
    return bool(found)


def _serial(loop: tirx.For) -> tirx.For:
    if loop.kind != tirx.ForKind.PARALLEL:
        return loop
    return tirx.For(
        loop.loop_var,
        loop.min,
        loop.extent,
        tirx.ForKind.SERIAL,
        loop.body,
        loop.thread_binding,
        loop.annotations,
        loop.step,
        loop.span,
    )


def serialize(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with every parallel loop a serial loop."""
    return func.with_body(tvm_ffi.structural_map(func.body, (tirx.For, _serial)))


def split_small_kernels(min_iterations: int = MIN_SPLIT_ITERATIONS):
    """``(count, serialize)``: two module passes sharing one table. ``count`` goes where the
    kernels are fused and not yet scheduled (it records each kernel's scalar iterations);
    ``serialize`` goes after scheduling (it makes the parallel loops of the kernels below
    ``min_iterations`` serial)."""
    work: dict[str, int] = {}

    @tvm.transform.module_pass(opt_level=0, name="IntqCountKernelWork")
    def count(mod, ctx):
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                work[gv.name_hint] = scalar_iterations(func.body)
        return mod

    @tvm.transform.module_pass(opt_level=0, name="IntqSerialSmallKernels")
    def serial(mod, ctx):
        updates = {
            gv: serialize(func)
            for gv, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc)
            and _has_parallel(func)
            and work.get(gv.name_hint, min_iterations) < min_iterations
        }
        if not updates:
            return mod
        mod = mod.clone()  # the caller's module stays as it was
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return count, serial
