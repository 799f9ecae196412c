"""A cheap schedule for the float kernels calibration and evaluation run (not for ``--fp32``).

Calibration runs the float model built by TVM over every calibration sample, and the report
runs it again on the held-out samples. Without a schedule each float conv is TVM's plain loop
nest: the accumulator is loaded and stored at every reduction step (light_resnet50: ~6 s of
CPU per sample on this 2-core AVX2 host, 90 % of ``compile``). This schedule keeps a tile of
outputs in registers over the whole reduction instead:

    spatial loops (tile axis and vector axis split; the outer ones fused, parallel)
      init the tile's accumulators (a local buffer, promoted to registers by LLVM)
      reduction loops, in the kernel's own order
        tile axis (unrolled) x vector axis (vectorized): acc += a * b
      write the tile back

Each output element is still the sum of the same products **in the same order** (the
reduction loops are not split or reordered, only moved outside the spatial tile), so the
float values, and the calibration ranges read from them, are those of the unscheduled kernel
bit for bit (``tests/test_float_schedule.py``). The tile axis is the output-channel axis of a
conv (a spatial axis the data input is not indexed by: each input vector serves ``tile``
channels); the vector axis is the output's innermost axis.

``tvm-intq compile --fp32`` does not use it: that column of the bench is TVM as a user gets
it.
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import s_tir, tirx

LOG = logging.getLogger(__name__)

#: fp32 lanes of an AVX2 vector; the vector tile is a multiple of it when the axis allows.
LANES = 8
#: Output channels per tile (accumulators: TILE x vector tile / LANES registers).
TILE = 4


def _divisor(extent: int, candidates) -> int:
    return next((c for c in candidates if c <= extent and extent % c == 0), 1)


def _reduction_block(sch: s_tir.Schedule):
    """The kernel's one float32 reduction block whose loops are all spatial loops, then all
    reduction loops (a legalized conv, pool or matmul), or None."""
    found = []
    for block in sch.get_child_blocks(sch.get_sblock("root", func_name="main")):
        b = sch.get(block)
        if b.init is None:
            continue
        found.append(block)
    if len(found) != 1:
        return None
    block = found[0]
    b = sch.get(block)
    if len(b.writes) != 1 or str(b.writes[0].source.dtype) != "float32":
        return None
    kinds = [iv.iter_type for iv in b.iter_vars]
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or any(
        not isinstance(sch.get(lp).extent, tirx.IntImm) for lp in loops
    ):
        return None
    spatial = [k == tirx.IterVar.DataPar for k in kinds]
    if not any(spatial) or all(spatial) or spatial != sorted(spatial, reverse=True):
        return None
    if any(sch.get(lp).kind != tirx.ForKind.SERIAL for lp in loops):
        return None
    # Loop i binds block variable i, as legalization leaves it (the reorder relies on it).
    realize = block_realize(sch, block)
    if realize is None or any(
        not value.same_as(sch.get(lp).loop_var) for value, lp in zip(realize.iter_values, loops)
    ):
        return None
    return block


def block_realize(sch: s_tir.Schedule, block) -> s_tir.SBlockRealize | None:
    """The ``SBlockRealize`` that binds ``block``'s variables to loop expressions in ``main``
    (None if there is not exactly one)."""
    b, found = sch.get(block), []
    tvm_ffi.structural_walk(
        sch.mod["main"].body,
        [(s_tir.SBlockRealize, lambda r: found.append(r) if r.block.same_as(b) else None)],
    )
    return found[0] if len(found) == 1 else None


def _uses(expr, var) -> bool:
    found = []
    tvm_ffi.structural_walk(
        expr, [(tirx.Var, lambda v: found.append(1) if v.same_as(var) else None)]
    )
    return bool(found)


def schedule_float(sch: s_tir.Schedule) -> bool:
    """Apply the module docstring's schedule to the kernel in ``sch``; False (and ``sch``
    unchanged) when the kernel has no single float reduction block it fits."""
    block = _reduction_block(sch)
    if block is None:
        return False
    b = sch.get(block)
    nspatial = sum(iv.iter_type == tirx.IterVar.DataPar for iv in b.iter_vars)
    loops = sch.get_loops(block)
    spatial, reduce = loops[:nspatial], loops[nspatial:]
    extents = [int(sch.get(lp).extent) for lp in spatial]
    out_indices = b.writes[0].region
    # The vector axis: the spatial variable of the output's innermost index.
    last = out_indices[-1].min
    vec = next(
        (i for i, iv in enumerate(b.iter_vars[:nspatial]) if last.same_as(iv.var)),
        None,
    )
    if vec is None:
        return False
    n = extents[vec]
    vlen = n if n <= 32 else _divisor(n, (16, 8, 24, 32, 14, 12, 10, 7, 6, 5, 4))
    # The tile axis: a spatial variable (not the vector's) the first read is not indexed by
    # (a conv's output channels); else the spatial axis just outside the vector axis.
    data = b.reads[0]
    tile = next(
        (
            i
            for i, iv in enumerate(b.iter_vars[:nspatial])
            if i != vec and extents[i] > 1 and not any(_uses(r.min, iv.var) for r in data.region)
        ),
        None,
    )
    if tile is None:
        tile = next((i for i in range(vec - 1, -1, -1) if extents[i] > 1), None)
    tlen = 1 if tile is None else _divisor(extents[tile], (TILE, 3, 2))
    if vlen * tlen < 4:
        return False
    cache = sch.cache_write(block, 0, "local")
    outer, inner = [], []
    for i, lp in enumerate(spatial):
        if i == vec:
            o, v = sch.split(lp, [None, vlen])
            outer.append(o)
            vec_loop = v
        elif i == tile and tlen > 1:
            o, t = sch.split(lp, [None, tlen])
            outer.append(o)
            inner.append(t)
        else:
            outer.append(lp)
    sch.reorder(*outer, *reduce, *inner, vec_loop)
    sch.reverse_compute_at(cache, outer[-1])
    # Loop kinds before the init is split off: the update alone is no longer a reduction
    # block, and TVM refuses to parallelize or vectorize a loop over it.
    sch.parallel(sch.fuse(*outer[: max(1, len(outer) - 1)]))
    for t in inner:
        sch.unroll(t)
    sch.vectorize(vec_loop)
    init = sch.decompose_reduction(block, reduce[0])
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(cache)[-1])
    return True


@tvm.transform.module_pass(opt_level=0, name="IntqFloatSchedule")
class FloatSchedule:
    """Schedule every unscheduled float kernel :func:`schedule_float` fits."""

    def transform_module(self, mod, ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or (
                func.attrs is not None and func.attrs.get("tirx.is_scheduled", False)
            ):
                continue
            sch = s_tir.Schedule(tvm.IRModule({"main": func}))
            try:
                if schedule_float(sch):
                    updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            except (RuntimeError, ValueError) as err:  # left as it is: slower, same values
                LOG.debug("%s: no float schedule (%s)", gv.name_hint, str(err).splitlines()[0])
        for gv, func in updates.items():
            mod[gv] = func
        return mod
