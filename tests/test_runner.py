"""The runner (tvm_intq/compiler/runner.py): its inputs, and its thread setting (one thread,
no TVM thread pool)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_intq.compiler.runner import Runner, set_threads

# A kernel with a parallel loop, run in a fresh process (TVM's pool is per process and starts
# on the first parallel launch) that begins with TVM_NUM_THREADS=2; prints how many OS threads
# the thread setting and the run added (the result is checked in the script).
SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np, tvm
    from tvm import s_tir, te
    from tvm_intq.compiler.runner import set_threads
    x = te.placeholder((64, 64), "int32", name="x")
    y = te.compute(x.shape, lambda i, j: x[i, j] * 3 + 1, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    sch.parallel(sch.get_loops(sch.get_sblock("y"))[0])
    f = tvm.compile(sch.mod, "llvm")
    before = len(os.listdir("/proc/self/task"))
    if sys.argv[1] != "default":
        set_threads(int(sys.argv[1]))
    a = np.arange(64 * 64, dtype=np.int32).reshape(64, 64)
    b = tvm.runtime.tensor(np.zeros_like(a))
    f(tvm.runtime.tensor(a), b)
    assert (b.numpy() == a * 3 + 1).all()
    print(len(os.listdir("/proc/self/task")) - before)
""")


def _new_threads(setting: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, setting],
        capture_output=True,
        text=True,
        env={**os.environ, "TVM_NUM_THREADS": "2"},
        check=True,
    )
    return int(out.stdout.split()[-1])


@pytest.mark.integration  # fresh processes
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_one_thread_runs_parallel_loops_inline_without_a_pool():
    assert _new_threads("default") == 1  # TVM_NUM_THREADS=2: the pool starts one worker
    assert _new_threads("2") == 1
    assert _new_threads("1") == 0  # every parallel loop on the calling thread


def test_threads_must_be_positive():
    with pytest.raises(ValueError):
        set_threads(0)


def _double():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.multiply(x, relax.const(2.0, "float32"))))
    return tvm.compile(bb.get(), "llvm")


def test_inputs_read_in_place_or_through_a_staging_buffer_give_each_call_its_own_values():
    run = Runner(_double(), ["x"])
    base = np.empty(64 + 7, np.float32)
    for i in range(3):
        # unaligned (a slice 4 bytes into an array), then aligned or not: whatever numpy gives
        x = base[1 + i : 7 + i].reshape(2, 3)
        x[...] = np.arange(6, dtype=np.float32).reshape(2, 3) + 10 * i
        (y,) = run({"x": x})
        np.testing.assert_array_equal(y, 2 * x)
        x[...] = -1  # the output is the runner's copy, not a view of anything reused
        assert (y >= 0).all()
    transposed = (np.arange(6, dtype=np.float32).reshape(3, 2) + 100).T  # not contiguous
    np.testing.assert_array_equal(run({"x": transposed})[0], 2 * transposed)
