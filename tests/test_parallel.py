"""Kernels too small to split get serial loops (schedules/parallel.py): counted before
scheduling, serialized after, nothing but the loop kind changes, outputs stay the same."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

from tvm_intq.schedules import database as D
from tvm_intq.schedules.parallel import (
    MIN_SPLIT_ITERATIONS,
    _has_parallel,
    scalar_iterations,
    serialize,
    split_small_kernels,
)
from tvm_intq.schedules.pipeline import _ApplyDatabase, _DefaultSchedule, tuning_pipeline
from tvm_intq.targets import get_target


def _matmul(m, n, k):
    a = te.placeholder((m, k), "int8", name="a")
    b = te.placeholder((k, n), "int8", name="b")
    r = te.reduce_axis((0, k), name="r")
    c = te.compute(
        (m, n),
        lambda i, j: te.sum(a[i, r].astype("int32") * b[r, j].astype("int32"), axis=r),
        name="c",
    )
    return te.create_prim_func([a, b, c])


def _parallel_scale(n):
    """``y = 3 x + 1`` over ``n`` int32, the outer of its two loops parallel."""
    x = te.placeholder((n // 64, 64), "int32", name="x")
    y = te.compute(x.shape, lambda i, j: x[i, j] * 3 + 1, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    sch.parallel(sch.get_loops(sch.get_sblock("y"))[0])
    return sch.mod["main"]


def test_scalar_iterations_counts_every_store_of_every_loop():
    # c[i, j] = 0 (the reduction's init) once per (i, j), then k updates each
    assert scalar_iterations(_matmul(4, 5, 6).body) == 4 * 5 + 4 * 5 * 6
    assert scalar_iterations(_parallel_scale(1 << 12).body) == 1 << 12


def test_small_kernels_lose_their_parallel_loops_large_ones_keep_them(monkeypatch):
    small, large = _parallel_scale(1 << 10), _parallel_scale(MIN_SPLIT_ITERATIONS)
    mod = tvm.IRModule({"small": small, "large": large})
    count, serial = split_small_kernels()
    out = serial(count(mod))
    assert not _has_parallel(out["small"]) and _has_parallel(out["large"])
    # Only the loop kind changed: the serialized kernel is the original with serial loops.
    tvm.ir.assert_structural_equal(out["small"], serialize(small))
    kinds = []
    tvm_ffi.structural_walk(out["small"].body, [(tirx.For, lambda s: kinds.append(s.kind))])
    assert kinds == [tirx.ForKind.SERIAL, tirx.ForKind.SERIAL]
    # The same integers with the pool in use (two TVM threads) and without it.
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    x = np.arange(1 << 10, dtype=np.int32).reshape(-1, 64)
    got = []
    for func in (small, out["small"]):
        y = tvm.runtime.tensor(np.zeros_like(x))
        tvm.compile(func, "llvm")(tvm.runtime.tensor(x), y)
        got.append(y.numpy())
    np.testing.assert_array_equal(got[0], x * 3 + 1)
    np.testing.assert_array_equal(got[1], got[0])


def test_threshold_zero_keeps_every_parallel_loop():
    count, serial = split_small_kernels(0)
    assert _has_parallel(serial(count(tvm.IRModule({"main": _parallel_scale(1 << 10)})))["main"])


@pytest.mark.integration
def test_bundled_model_for_vnni_keeps_parallel_only_where_the_work_is(bundled_integer):
    """The bundled model as built for an AVX512-VNNI CPU (passes only: no VNNI CPU needed):
    tuned records and default schedules parallelize most kernels. With the default threshold
    none stays parallel (the whole model is ~60 us of work on such a CPU); with a lower one
    only the kernels above it do, and the serialized ones are their scheduled selves with
    serial loops."""
    host = get_target("host")
    target = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids", "num-cores": 2})
    with target:
        fused = tuning_pipeline(host.int8_dot)(bundled_integer)
        work = {
            gv.name_hint: scalar_iterations(f.body)
            for gv, f in fused.functions_items()
            if isinstance(f, tirx.PrimFunc)
        }
        scheduled = {}
        for threshold in (MIN_SPLIT_ITERATIONS, 1 << 18):
            count, serial = split_small_kernels(threshold)
            before = _DefaultSchedule(host.int8_dot)(  # (schedules the module it is given)
                _ApplyDatabase(D.union(D.shipped_databases("host")))(count(fused.clone()))
            )
            scheduled[threshold] = (before, serial(before))
    assert max(work.values()) < MIN_SPLIT_ITERATIONS
    before, after = scheduled[MIN_SPLIT_ITERATIONS]
    parallel = {
        gv.name_hint
        for gv, f in before.functions_items()
        if isinstance(f, tirx.PrimFunc) and _has_parallel(f)
    }
    assert len(parallel) > 5
    assert not any(_has_parallel(after[n]) for n in parallel)
    before, after = scheduled[1 << 18]
    kept = {n for n in parallel if _has_parallel(after[n])}
    assert 0 < len(kept) < len(parallel)
    assert all(work[n] >= 1 << 18 for n in kept)
    for name in parallel - kept:
        assert work[name] < 1 << 18
        tvm.ir.assert_structural_equal(after[name], serialize(before[name]))
