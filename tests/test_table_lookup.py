"""Lookup tables gathered with byte permutes (schedules/table_lookup.py): AVX-512 VBMI's
``vpermi2b``, NEON's ``tbl``/``tbx``. The pass rewrites exactly the vector gathers from
256-entry int8 tables, only for a target that has the instructions, and the kernel it builds
equals numpy's ``table[q + offset]`` on every table index (on this host, with or without
VBMI; on the emulated ARM board: test_intrinsics' shared-lookup cases).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import s_tir, te
from tvm.ir.expr import TensorLoad

from tvm_intq.schedules import tir_pipeline
from tvm_intq.schedules.intrinsics import table_permutes
from tvm_intq.schedules.table_lookup import TableLookupPermute
from tvm_intq.targets import get_target

VBMI = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4"}  # AVX-512 VBMI
AVX2 = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver2"}  # no AVX-512
NEON = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}


def _lookup_kernel(entries: int, rows: int, lanes: int = 16) -> tvm.IRModule:
    """``R[i, j] = H[Q[i, j] + O[j]]`` (a packed kernel's lookup stage), ``j`` vectorized as
    the default schedule does."""
    H = te.placeholder((entries,), "int8", name="H")
    Q = te.placeholder((rows, lanes), "int8", name="Q")
    off = te.placeholder((lanes,), "int32", name="O")
    R = te.compute(
        (rows, lanes), lambda i, j: H[Q[i, j].astype("int64") + off[j].astype("int64")], name="R"
    )
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([H, Q, off, R])}))
    sch.vectorize(sch.get_loops(sch.get_sblock("R"))[-1])
    return sch.mod


def _vector_gather(lanes: int, target: dict):
    """A function storing one vector gather ``H[index]`` of ``lanes`` int8 lanes."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(h: T.handle, q: T.handle, r: T.handle):
        H = T.match_buffer(h, (256,), "int8")
        Q = T.match_buffer(q, (lanes,), "int32")
        R = T.match_buffer(r, (lanes,), "int8")
        R[T.ramp(0, 1, lanes)] = H[Q[T.ramp(0, 1, lanes)]]

    return func.with_attr("target", tvm.target.Target(target))


def _permutes(func, name="vpermi2var") -> int:
    return str(func).count(name)


def _table_gathers(func) -> int:
    loads = []
    tvm_ffi.structural_walk(func.body, [(TensorLoad, loads.append)])
    return sum(ld.source.name == "H" and type(ld.indices[0]).__name__ != "Ramp" for ld in loads)


@pytest.mark.parametrize("lanes", [16, 32, 64])
def test_a_gather_from_a_256_entry_table_becomes_two_permutes_on_vbmi(lanes):
    func = _vector_gather(lanes, VBMI)
    assert _table_gathers(func) == 1
    out = TableLookupPermute(tvm.IRModule({"main": func}))["main"]
    assert _permutes(out) == 2
    assert _table_gathers(out) == 0  # the table is read as four contiguous 64-byte quarters


def test_a_16_lane_gather_becomes_tbl_and_three_tbx_on_arm():
    out = TableLookupPermute(tvm.IRModule({"main": _vector_gather(16, NEON)}))["main"]
    assert _permutes(out, "neon.tbl4") == 1 and _permutes(out, "neon.tbx4") == 3
    assert _table_gathers(out) == 0


def test_a_target_without_vbmi_keeps_its_gather():
    out = TableLookupPermute(tvm.IRModule({"main": _vector_gather(16, AVX2)}))["main"]
    assert _permutes(out) == 0 and _table_gathers(out) == 1


def _asm_permutes(mod) -> int:
    asm = tvm.compile(mod, tvm.target.Target(VBMI), tir_pipeline=tir_pipeline()).mod
    asm = asm.inspect_source("asm")
    return asm.count("vpermi2b") + asm.count("vpermt2b")


def test_a_per_channel_table_is_not_permuted():
    """Several 256-entry tables in one buffer (a table per channel) do not fit the four
    registers: the kernel keeps its scalar gather."""
    assert _asm_permutes(_lookup_kernel(entries=256 * 16, rows=4)) == 0
    assert _asm_permutes(_lookup_kernel(entries=256, rows=4)) > 0


def test_a_shared_table_lookup_built_for_this_host_equals_numpy_on_every_index():
    """With VBMI (permutes) or without (the scalar gather), the same values."""
    host = get_target("host").target()
    rng = np.random.default_rng(0)
    rows, lanes = 256, 16
    table = rng.integers(-128, 128, 256).astype(np.int8)
    offsets = rng.integers(0, 256, lanes).astype(np.int32)
    offsets[0] = 128  # lane 0 reads every entry: q = -128..127
    q = np.empty((rows, lanes), np.int64)
    for j, off in enumerate(offsets):  # q + offset inside the table, q inside int8
        q[:, j] = rng.integers(max(-128, -off), min(127, 255 - off) + 1, rows)
    q[:, 0] = np.arange(-128, 128)
    expect = table[q + offsets[None, :]]
    built = tvm.compile(_lookup_kernel(256, rows, lanes), host, tir_pipeline=tir_pipeline())
    asm = built.mod.inspect_source("asm")
    assert ("vpermi2b" in asm or "vpermt2b" in asm) == (table_permutes(host) == "x86")
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((rows, lanes), np.int8), dev)
    args = [tvm.runtime.tensor(a, dev) for a in (table, q.astype(np.int8), offsets)]
    built.mod["main"](*args, out)
    np.testing.assert_array_equal(out.numpy(), expect)
