"""Kernels' small scratch buffers go on the stack, not through TVM's workspace pool
(schedules/stack_allocation.py): the allocation is annotated and nothing else changes, the
library calls no TVMBackendAllocWorkspace for it, outputs are the same bit for bit."""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, te, tirx

from tvm_intq.schedules.stack_allocation import (
    DISABLE_LOWER_BUILTIN,
    MAX_STACK_BYTES,
    register_pipeline,
    stack_allocations,
)


def _two_stage(n):
    """``t = x * 3`` in an intermediate buffer of ``n`` int32, then ``y = t + 1``: a kernel
    whose intermediate is a ``global`` buffer of ``4 n`` bytes (TE keeps each stage)."""
    x = te.placeholder((n,), "int32", name="x")
    t = te.compute((n,), lambda i: x[i] * 3, name="t")
    y = te.compute((n,), lambda i: t[i] + 1, name="y")
    return te.create_prim_func([x, y]).with_attr("global_symbol", "two_stage")


def _lowered(func):
    # as tvm.tirx.build runs TVM's lowering: target bound first (the host's own)
    target = tvm.target.Target({"kind": "llvm"})
    mod = tvm.tirx.transform.BindTarget(target.with_host(target))(tvm.IRModule({"f": func}))
    lower, _, _ = tvm.tirx.get_tir_pipeline("s_tir")
    return lower(mod)["f"]


def _allocs(func):
    found = []
    tvm_ffi.structural_walk(func.body, [(tirx.AllocBuffer, found.append)])
    return found


def _local(func):
    """``func`` with its intermediate in ``local`` scope (a schedule's per-thread buffer)."""
    sch = s_tir.Schedule(func)
    sch.set_scope(sch.get_sblock("t"), 0, "local")
    return sch.mod["main"]


def test_small_global_buffers_are_annotated_large_and_local_ones_are_not():
    small, large = _lowered(_two_stage(1024)), _lowered(_two_stage(MAX_STACK_BYTES))
    (a,) = _allocs(stack_allocations(small))
    assert a.buffer.scope() == "global" and bool(a.annotations[DISABLE_LOWER_BUILTIN])
    # 4 * MAX_STACK_BYTES bytes: above the limit, left to the workspace pool
    assert stack_allocations(large).same_as(large)
    # local buffers stay as TVM lowers them (module SCOPES: measured, not worth it)
    local = _lowered(_local(_two_stage(4)))
    assert stack_allocations(local).same_as(local)


def _build(func, pipeline):
    return tvm.tirx.build(
        tvm.IRModule({"two_stage": func}), target=tvm.target.Target({"kind": "llvm"}),
        pipeline=pipeline,
    )  # fmt: skip


def test_no_workspace_call_and_the_same_outputs():
    func = _two_stage(4096)  # 16 KB: a workspace allocation in TVM's default pipeline
    default, ours = _build(func, "s_tir"), _build(func, register_pipeline())
    assert "@__TVMBackendAllocWorkspace" in default.inspect_source("ll")
    assert "@__TVMBackendAllocWorkspace" not in ours.inspect_source("ll")
    assert "alloca" in ours.inspect_source("ll")
    x = np.random.default_rng(0).integers(-1000, 1000, 4096, dtype=np.int32)
    outs = []
    for lib in (default, ours):
        y = tvm.runtime.tensor(np.zeros_like(x))
        lib["two_stage"](tvm.runtime.tensor(x), y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], x * 3 + 1)
    np.testing.assert_array_equal(outs[1], outs[0])


def test_bundled_model_builds_without_workspace_calls_and_matches_the_reference(bundled_integer):
    # the whole flow's build (tvm_intq.compiler.steps.build) uses the pipeline: the bundled
    # model's kernels keep no workspace allocation, and the outputs equal the numpy reference
    from tvm_intq import api
    from tvm_intq.compiler.runner import Runner
    from tvm_intq.demo import bundled
    from tvm_intq.evaluation.reference import run_reference
    from tvm_intq.schedules import build_pipeline
    from tvm_intq.targets import get_target

    ex = api.build(bundled_integer, "host")
    default = tvm.compile(
        bundled_integer, get_target("host").target(), relax_pipeline=build_pipeline(
            get_target("host").int8_dot), tir_pipeline="s_tir",
    )  # fmt: skip
    # fewer workspace calls than TVM's lowering leaves (local accumulators keep theirs)
    calls = "load ptr, ptr @__TVMBackendAllocWorkspace"

    def count(executable):  # the kernels are the VM module's LLVM import
        return executable.mod.imports[0].inspect_source("ll").count(calls)

    assert count(ex) < count(default)
    x = np.load(bundled("heldout.npz"))["input"][:1]
    got = Runner(ex, ["input"])({"input": x})[0]
    want = np.asarray(run_reference(bundled_integer, {"input": x}))
    np.testing.assert_array_equal(got, want.reshape(got.shape))
