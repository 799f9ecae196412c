"""A fixed schedule for packed int8 kernels that no tuning record covers.

Tuning (:mod:`.tune`, in the space of :mod:`.space`) tensorizes the packed conv
(:mod:`.packed_kernels`) and the database keeps the result. A kernel without a record gets
this schedule instead of TVM's untouched loop nest, so ``compile`` emits the dot-product
instruction without any tuning::

    parallel(n, o/(L b), oh) . ow/t . (ic/K, kh, kw) . unrolled ow%t . unrolled b
        . [(R x) L x K] = intrinsic

(``L``, ``K``, ``R``: the instruction's lanes, bytes and rows, e.g. VNNI 16 x 4; for ``R > 1``
the columns are groups of ``R`` pixels; ``t x b``: the register tile, :func:`_tile_shape`.)

The epilogue (requantize and whatever FuseOps fused after it) of a kernel that writes the
blocked layout runs per tile, right after the tile's reduction, vectorized along a pixel's
``L`` channels: the tile's accumulators never leave the registers (LLVM promotes the
tile-sized buffer; on RVV that, not the multiply-adds, decided the instruction count). A
lookup table stays a stage of its own after the requantize: TVM vectorizes a gather only by
scalarizing the whole loop body. An epilogue writing another layout (a conv with a plain int32
result) is inlined into the block writing the output, a loop nest after the reduction,
parallel over its outer loops and vectorized along its innermost. Anything the schedule
cannot do leaves the function as it was (correct, just untensorized).

A depthwise conv gets :func:`_apply_depthwise_blocked` (:func:`.packed_kernels.depthwise_blocked`)
or :func:`_apply_depthwise_nchw` (:func:`.packed_kernels.depthwise_requant`).
Kernels without a conv (packing, unpacking, requantize, adds, concats, resizes, pools,
lookups) get :func:`apply_elementwise`, chosen by their shapes alone (not on RVV, where
LLVM's vectorization of the plain loops did better); :func:`injective_candidates` are what
tuning measures for them beside their plain loops.
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad

from tvm_intq.schedules.float_schedule import block_realize
from tvm_intq.schedules.intrinsics import (
    LOOKUP_ENTRIES,
    LOOKUP_LANES,
    DotProduct,
    register,
    table_permutes,
)
from tvm_intq.schedules.packed_kernels import (
    BLOCK_PACK,
    CONV_BLOCK,
    DEPTHWISE_BLOCK,
    DEPTHWISE_BLOCKED,
    LOOKUP_BLOCK,
    PAD_BLOCK,
    REQUANT_BLOCK,
)

log = logging.getLogger(__name__)

#: Output columns computed per intrinsic sweep (register blocking), largest that divides OW.
_COLUMN_TILES = (8, 7, 6, 5, 4, 3, 2, 1)


def _tile_shape(width: int, channel_blocks: int, intrin: DotProduct) -> tuple[int, int]:
    """``(columns, channel blocks)`` of a conv's register tile: ``columns`` dividing the
    output width, ``channel blocks`` (of ``L`` channels) dividing the blocks and at most the
    instruction's :attr:`~.intrinsics.DotProduct.channel_blocks`, at most ``max_tile``
    accumulators together. Per reduction step a tile loads ``columns`` activations and
    ``blocks`` weight vectors for ``columns x blocks`` instructions: the shape with the most
    instructions per load wins (ties: more channel blocks, then more columns). With one
    block per tile this is the widest column tile. ``sdot`` takes up to 4 blocks (4 x 16
    channels as XNNPACK's kernels): the bundled model's int8 conv kernels on the emulated
    Neoverse-N1, no tuning database, 541k -> 433k instructions, 182k -> 161k llvm-mca
    cycles."""
    shapes = [
        (t, b)
        for t in _COLUMN_TILES
        for b in range(1, intrin.channel_blocks + 1)
        if width % t == 0 and channel_blocks % b == 0 and t * b <= intrin.max_tile
    ]
    return max(shapes, key=lambda s: (s[0] * s[1] / (s[0] + s[1]), s[1], s[0]))


def _blocks(sch: s_tir.Schedule):
    root = sch.get_sblock("root", func_name="main")
    return list(sch.get_child_blocks(root))


def _name(sch, block) -> str:
    return sch.get(block).name_hint


def has_default(func: tirx.PrimFunc) -> bool:
    """True for a kernel of :mod:`.packed_kernels` (a packed or a depthwise conv): one
    :func:`apply_default` schedules."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    return any(
        _name(sch, b) in (CONV_BLOCK, DEPTHWISE_BLOCK, DEPTHWISE_BLOCKED) for b in _blocks(sch)
    )


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _gathers(block) -> bool:
    """True when ``block`` reads a buffer at an index loaded from another (a lookup table)."""
    found = []
    for read in block.reads:
        for r in read.region:
            tvm_ffi.structural_walk(r.min, [(TensorLoad, found.append)])
    return bool(found)


def _permutable(sch, block) -> bool:
    """True when ``block`` is a lookup stage the target can gather with byte permutes (the
    current target has AVX-512 VBMI or NEON, :func:`~.intrinsics.table_permutes`) from a table of
    :data:`~.intrinsics.LOOKUP_ENTRIES` (a per-channel table, several in one buffer, cannot)."""
    if _name(sch, block) != LOOKUP_BLOCK or table_permutes() is None:
        return False
    tables = [r.source for r in sch.get(block).reads if r.source.dtype == "int8"]
    return any(len(b.shape) == 1 and int(b.shape[0]) == LOOKUP_ENTRIES for b in tables)


def _lookup_lanes(sch, block, loops) -> bool:
    """Vectorize :data:`~.intrinsics.LOOKUP_LANES` lanes of a :func:`_permutable` lookup stage
    whose innermost ``loops`` are a pixel loop then a pixel's channels: the channels where they
    are that many (VNNI's 16), else as many adjacent pixels' channels as make them (ARM's 4
    channels x 4 pixels: adjacent in the blocked layout), the rest of the pixels outside.
    :mod:`.table_lookup` turns the vector gather into permutes (a scalar gather otherwise: TVM
    scalarizes it at codegen). True when it did: the vector loop is then the innermost."""
    if len(loops) < 2 or not _permutable(sch, block):
        return False
    pixels, lanes = loops[-2], loops[-1]
    n = _extent(sch, lanes)
    if n == LOOKUP_LANES:
        sch.vectorize(lanes)
        return True
    group = LOOKUP_LANES // n
    if LOOKUP_LANES % n or _extent(sch, pixels) % group:
        return False
    sch.vectorize(sch.fuse(sch.split(pixels, [None, group])[1], lanes))
    return True


def _inline_epilogue(sch, keep) -> list:
    """Inline the elementwise epilogue into the block(s) writing the outputs, except the blocks
    named in ``keep``; returns the epilogue blocks left, in order."""
    for block in reversed(_blocks(sch)):
        if _name(sch, block) == CONV_BLOCK or _name(sch, block) in keep:
            continue
        try:
            sch.compute_inline(block)
        except RuntimeError:
            pass  # an output block, or not inlinable: stays a loop nest of its own
    return [b for b in _blocks(sch) if _name(sch, b) != CONV_BLOCK]


def apply_default(sch: s_tir.Schedule, intrin: DotProduct) -> None:
    """Schedule the packed or depthwise kernel ``main`` of ``sch`` in place (module
    docstring); raises on what it cannot schedule. ``sch`` may be traced: the trace is a
    tuning record's."""
    names = [_name(sch, b) for b in _blocks(sch)]
    if DEPTHWISE_BLOCKED in names:
        _apply_depthwise_blocked(sch, intrin)
        return
    if DEPTHWISE_BLOCK in names:
        _apply_depthwise_nchw(sch, intrin)
        return
    register()
    conv = sch.get_sblock(CONV_BLOCK, func_name="main")
    # A lookup table's gather cannot be vectorized: with the requantize apart, that can.
    epilogue = _inline_epilogue(sch, keep=(REQUANT_BLOCK,))
    ndim = len(sch.get(conv).writes[0].region)
    tiled = all(len(sch.get(b).writes[0].region) == ndim for b in epilogue)
    if not tiled and len(epilogue) > 1:
        epilogue = _inline_epilogue(sch, keep=())
    loops = sch.get_loops(conv)
    (n, o, y, x), inner, (rc, ry, rx, rk) = loops[:4], loops[4:-4], loops[-4:]
    # inner: (lanes,) or, for a multi-row instruction, (rows, lanes)
    shape = ((intrin.rows,) if intrin.rows > 1 else ()) + (intrin.lanes,)
    if tuple(_extent(sch, i) for i in inner) != shape or _extent(sch, rk) != intrin.k:
        raise ValueError("packed conv does not match the intrinsic's rows x lanes x k")
    tile, blocks = _tile_shape(_extent(sch, x), _extent(sch, o), intrin)
    xo, xi = sch.split(x, [None, tile])
    if blocks > 1:  # the tile's channel blocks innermost but the instruction's own axes
        o, oi = sch.split(o, [None, blocks])
        sch.reorder(n, o, y, xo, rc, ry, rx, xi, oi, *inner, rk)
    else:
        sch.reorder(n, o, y, xo, rc, ry, rx, xi, *inner, rk)
    outer = sch.fuse(n, o, y)
    sch.parallel(outer)
    if tiled:  # the epilogue of each tile right after it: the accumulators stay in registers
        for block in epilogue:
            sch.reverse_compute_at(block, xo)
    init = sch.decompose_reduction(conv, rc)
    init_loops = sch.get_loops(init)[-len(inner) :]
    if tiled:  # LLVM vectorizes the zeros (TVM would make RVV's masked vscale-sized stores)
        for loop in init_loops:
            sch.unroll(loop)
    else:
        sch.vectorize(sch.fuse(*init_loops))
    sch.tensorize(inner[0], intrin.tensor_intrin)
    sch.unroll(xi)
    if blocks > 1:
        sch.unroll(oi)
    for block in epilogue:
        loops = sch.get_loops(block)
        if tiled:
            gather = _gathers(sch.get(block))
            if not gather and intrin.rows > 1:
                # The L channels as the vector around the R pixels (unrolled): each channel
                # constant is loaded once per tile, not once per pixel (RVV: TVM's vscale
                # chunks reload them with masks; -11 % of the bundled model's instructions).
                sch.reorder(loops[-1], loops[-2])
                loops = sch.get_loops(block)
                sch.vectorize(loops[-2])
                for loop in loops[2:-2] + [loops[-1]]:
                    sch.unroll(loop)
                continue
            if not gather:  # vectorized along a pixel's L channels
                sch.vectorize(loops[-1])
            vector = not gather or _lookup_lanes(sch, block, loops)
            loops = sch.get_loops(block)
            for loop in loops[2 : len(loops) - vector]:
                sch.unroll(loop)
            continue
        if len(loops) >= 3:  # vectorized along the innermost: a pixel's L channels
            sch.vectorize(loops[-1])
        if len(loops) >= 2:
            sch.parallel(sch.fuse(*loops[:2]))


#: Output pixels of a depthwise conv computed per tile (their accumulators stay in
#: registers, and each weight vector loaded is used that many times), largest dividing OW.
_DEPTHWISE_TILES = (4, 3, 2, 1)
#: The same for a depthwise conv written as a reduction over its taps (float32 on x86), run
#: tap by tap over the tile: 8 accumulators leave half of AVX2's 16 registers to the weight
#: and activation vectors (PP-OCR cls's 5x5 alone: 25 us at 8 pixels, 37 us at 4).
_DEPTHWISE_REDUCTION_TILES = (8, 7, 6, 5, 4, 3, 2, 1)


def _apply_depthwise_nchw(sch: s_tir.Schedule, intrin: DotProduct) -> None:
    """A depthwise conv in ``NCHW`` (:func:`.packed_kernels.depthwise_requant`): parallel over
    channels, the padded plane of a channel built in front of its rows, each output row
    computed (all taps), requantized and looked up in turn. The rows are vectorized along the
    columns; for a target TVM would vectorize with scalable vectors (RVV) they are left to
    LLVM's loop vectorizer, which does better there: ``vwmacc.vx`` per tap and the lookup as
    one indexed load (``vluxei``), where TVM's chunks take twice the instructions and
    scalarize the gather (measured on the emulated board, the bundled model's 3x3: 66k
    instructions against 141k)."""
    conv = sch.get_sblock(DEPTHWISE_BLOCK, func_name="main")
    n, c, y, x = sch.get_loops(conv)
    channel = sch.fuse(n, c)
    sch.parallel(channel)
    present = {_name(sch, b) for b in _blocks(sch)}
    vectorize = (lambda loop: None) if intrin.scalable else sch.vectorize
    if PAD_BLOCK in present:
        pad = sch.get_sblock(PAD_BLOCK, func_name="main")
        sch.compute_at(pad, channel)
        vectorize(sch.get_loops(pad)[-1])
    for name in (REQUANT_BLOCK, LOOKUP_BLOCK):
        if name in present:
            block = sch.get_sblock(name, func_name="main")
            sch.reverse_compute_at(block, y)
            if name == REQUANT_BLOCK:
                vectorize(_vector_chunks(sch, sch.get_loops(block)[-1]))
    vectorize(_vector_chunks(sch, x))


#: Output columns of an ``NCHW`` depthwise conv computed as one vector.
_DEPTHWISE_VECTOR = 16


def _vector_chunks(sch, loop):
    """The inner loop of ``loop`` split into chunks of at most :data:`_DEPTHWISE_VECTOR`."""
    if _extent(sch, loop) <= _DEPTHWISE_VECTOR:
        return loop
    return sch.split(loop, [None, _DEPTHWISE_VECTOR])[1]


def _apply_depthwise_blocked(sch: s_tir.Schedule, intrin: DotProduct) -> None:
    """A depthwise conv in the blocked layout (:func:`.packed_kernels.depthwise_blocked`):
    parallel over channel blocks, the padded plane of a block built in front of its rows
    (reading the packed conv's result, or the ``NCHW`` tensor through an inlined
    :data:`~.packed_kernels.BLOCK_PACK`), then tiles of output pixels: all taps of a tile as
    vector multiply-adds over a pixel's ``L`` channels, its requantize vectorized the same
    way; its lookup right after, or (a kernel that unpacks its result) in the unpack, a loop
    nest of its own parallel over its outer loops."""
    present = {_name(sch, b) for b in _blocks(sch)}
    if BLOCK_PACK in present:
        sch.compute_inline(sch.get_sblock(BLOCK_PACK, func_name="main"))
    conv = sch.get_sblock(DEPTHWISE_BLOCKED, func_name="main")
    n, c, y, x, lane, *taps = sch.get_loops(conv)  # taps: a reduction's (float32) ry, rx
    channel = sch.fuse(n, c)
    sch.parallel(channel)
    vectorize = (lambda loop: None) if intrin.scalable else sch.vectorize
    if PAD_BLOCK in present:
        pad = sch.get_sblock(PAD_BLOCK, func_name="main")
        sch.compute_at(pad, channel)
        vectorize(sch.get_loops(pad)[-1])
    width = _extent(sch, x)
    tiles = _DEPTHWISE_REDUCTION_TILES if taps else _DEPTHWISE_TILES
    tile = next(t for t in tiles if width % t == 0)
    xo, xi = sch.split(x, [None, tile])
    if taps:
        sch.reorder(xo, *taps, xi, lane)
    for name in (REQUANT_BLOCK, LOOKUP_BLOCK):
        if name in present:
            block = sch.get_sblock(name, func_name="main")
            last = _name(sch, _blocks(sch)[-1]) == LOOKUP_BLOCK
            if name == LOOKUP_BLOCK and not last and not _permutable(sch, block):
                # A scalar gather either way: done where the result is unpacked, it saves a
                # pass over the tensor (the 5x5 of PP-OCR cls: 83 -> 72 us).
                sch.compute_inline(block)
                continue
            sch.reverse_compute_at(block, xo)
            tile_loops = sch.get_loops(block)[3:]  # channel, y, xo, then the tile's
            if name == REQUANT_BLOCK:
                vectorize(tile_loops[-1])
                tile_loops = tile_loops[:-1]
            elif _lookup_lanes(sch, block, tile_loops):
                tile_loops = sch.get_loops(block)[3:-1]
            for loop in tile_loops:
                sch.unroll(loop)
    sch.unroll(xi)
    vectorize(lane)
    if taps:
        sch.unroll(taps[-1])
    _inline_tail(sch)
    tail = _blocks(sch)[-1]
    if _name(sch, tail) not in (REQUANT_BLOCK, LOOKUP_BLOCK):
        loops = sch.get_loops(tail)
        if len(loops) >= 2:
            sch.parallel(sch.fuse(*loops[:2]))
    if taps:
        # Last: TVM vectorizes the lanes of a reduction only while it still has its init.
        sch.decompose_reduction(conv, taps[0])


def _inline_tail(sch: s_tir.Schedule) -> None:
    """Stages FuseOps put after a kernel's own (an ``unpack`` and the next conv's packing):
    each inlined into the next, so they are one pass over the kernel's result."""
    own = (PAD_BLOCK, BLOCK_PACK, DEPTHWISE_BLOCKED, CONV_BLOCK, REQUANT_BLOCK, LOOKUP_BLOCK)
    for block in _blocks(sch)[:-1]:
        if _name(sch, block) not in own:
            try:
                sch.compute_inline(block)
            except RuntimeError:
                pass  # read twice, or not injective: a loop nest of its own


def injective_candidates(mod: tvm.IRModule, lanes: int) -> list[s_tir.Schedule]:
    """Schedules of a kernel without a conv (packing, unpacking, adds, concats, pools) worth
    measuring beside its plain loop nest (tuning starts from them, :func:`.tune._measure_default`);
    MetaSchedule's space holds none of them (it inlines, but never reorders a loop nest
    without a reduction). Every stage inlined into the output (one loop nest LLVM vectorizes
    as a whole), and in that nest:

    * for an NCHW output of whole blocks of ``lanes`` channels, the blocked order (the
      ``lanes`` channels of a block innermost): reading a packed conv's result through
      ``unpack`` is then contiguous;
    * the two innermost loops swapped: LLVM vectorizes the outer one of a short innermost
      axis (a packed layout's ``k``), and reads a blocked layout's rows at a stride instead
      of gathering its columns.

    Measured on the emulated RVV board (instructions; llvm-mca P670 cycles): the bundled
    model's residual add 89k plain, 65k inlined, 15k swapped (cycles -70 %); its padded
    packing 30k plain, 13k swapped (-30 %)."""

    def inlined():
        sch = s_tir.Schedule(mod)
        return sch, _inline_epilogue(sch, keep=())

    merged, out = inlined()
    if any(
        iv.iter_type != tirx.IterVar.DataPar
        for b in _blocks(merged)
        for iv in merged.get(b).iter_vars
    ):
        return []  # a reduction (a float conv, a sum): MetaSchedule's tiling is for those
    candidates = [merged]
    if len(out) != 1:
        return candidates
    loops = merged.get_loops(out[0])
    if len(loops) == 4 and _extent(merged, loops[1]) % lanes == 0:
        blocked, (block,) = inlined()
        n, c, y, x = blocked.get_loops(block)
        co, ci = blocked.split(c, [None, lanes])
        blocked.reorder(n, co, y, x, ci)
        candidates.append(blocked)
    if len(loops) >= 2:
        swapped, (block,) = inlined()
        inner = swapped.get_loops(block)[-2:]
        swapped.reorder(inner[1], inner[0])
        candidates.append(swapped)
    return candidates


def _reduces(sch, block) -> bool:
    return any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars)


def _iterations(sch, block) -> int:
    total = 1
    for loop in sch.get_loops(block):
        total *= _extent(sch, loop)
    return total


#: A stage is inlined only into consumers that evaluate it at most this many times per value
#: it computes: a window packing reads each input value KH*KW times, a 2x resize 4 times, so
#: the stage's value is computed once and read from memory there.
_MAX_RECOMPUTE = 2


def _duplicated(sch, block) -> bool:
    """True when a consumer of ``block`` iterates over more than :data:`_MAX_RECOMPUTE` times
    the values ``block`` writes (inlined, it would compute them that many times)."""
    values = 1
    for extent in sch.get(block).writes[0].source.shape:  # the buffer it writes
        values *= int(extent)
    return any(_iterations(sch, c) > _MAX_RECOMPUTE * values for c in sch.get_consumers(block))


#: Innermost loops at most this long are unrolled by the elementwise schedule (a packing's
#: ``k``, a blocked layout's lanes read across): LLVM then vectorizes the loop around them.
_SHORT_INNER = 4


def apply_elementwise(sch: s_tir.Schedule) -> None:
    """The fixed schedule of a kernel without a conv (packing, unpacking, requantize, adds,
    concats, resizes, lookups, pools), chosen by its shape alone: every stage inlined into its
    consumer (one pass over memory; unscheduled, each stage writes a whole intermediate
    tensor), a reduction's elementwise epilogue inlined into it; then each loop nest left
    parallel over its outer loops (serial for a kernel too small to split, :mod:`.parallel`),
    a short innermost loop unrolled, the rows and the innermost contiguous loop split at a
    padding's borders (:func:`_partition_padding`), that loop left to LLVM's loop vectorizer,
    which forms interleaved accesses and widening casts where TVM's ``vectorize`` would
    scalarize a lookup's whole loop body. A sum over whole axes accumulates in a register
    (:func:`_accumulate_in_register`)."""
    for block in reversed(_blocks(sch)):
        if not _reduces(sch, block) and not _duplicated(sch, block):
            try:
                sch.compute_inline(block)
            except RuntimeError:
                pass  # an output, or read at several places: stays a loop nest
    for block in _blocks(sch):
        if not _reduces(sch, block):
            try:
                sch.reverse_compute_inline(block)
            except RuntimeError:
                pass
    for block in _blocks(sch):
        loops = sch.get_loops(block)
        if _reduces(sch, block):
            # Parallel over its leading output loops but the innermost one, which LLVM
            # vectorizes (fused, each output would divide its index back apart).
            kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
            outer = 0
            while outer < min(len(loops), len(kinds)) and kinds[outer] == tirx.IterVar.DataPar:
                outer += 1
            if _whole_axes(sch, block, loops, kinds, outer):
                _accumulate_in_register(sch, block, loops, outer)
            elif outer >= 2:
                sch.parallel(sch.fuse(*loops[: outer - 1]))
            continue
        if not loops:
            continue  # a scalar (the searches' gates)
        short = len(loops) >= 2 and _extent(sch, loops[-1]) <= _SHORT_INNER
        if short:
            sch.unroll(loops[-1])
        if len(loops) < 3:
            _partition_padding(sch, block, loops[-1 - short])
            continue
        # The rows split at a padding's borders too (a padded packing's first and last rows),
        # each part parallel, then each part's columns: no condition is left in the interior,
        # which LLVM then vectorizes (on AArch64 it kept the whole input quantize+pack scalar
        # with the rows' condition inside: 26 % of the unseen CNN's Neoverse-N1 cycles).
        rows = sch.fuse(*loops[:-2])
        for part in _partition_padding(sch, block, rows) or [rows]:
            sch.parallel(part)
            for leaf in sch.get_child_blocks(part):
                _partition_padding(sch, leaf, sch.get_loops(leaf)[-1 - short])


def _partition_padding(sch, block, loop) -> list | None:
    """Split ``loop`` where the block's comparisons of its variable with a constant change
    outcome (a padded packing's borders): the interior loop's conditions then simplify away
    and LLVM vectorizes it. With a condition guarding a load, LLVM cannot speculate the load
    and leaves the loop scalar: PP-OCRv4 det's input quantize+pack took 12 us per 10k values,
    its FPN's resize+add+pack kernels 2.3 and 1.6 ms, 3.2 us and 0.9 and 0.6 ms so. Returns
    the parts' loops, or None where nothing was split."""
    b, loop_var = sch.get(block), sch.get(loop).loop_var
    realize = block_realize(sch, block)
    if realize is None:
        return None
    bound = [iv.var for iv, v in zip(b.iter_vars, realize.iter_values) if v.same_as(loop_var)]
    if len(bound) != 1:
        return None
    var, extent, cuts = bound[0], _extent(sch, loop), set()

    def compare(node):
        # where the outcome flips: v < c and v >= c at c, v <= c and v > c at c + 1
        # (mirrored with the constant on the left)
        left = node.a.same_as(var)
        const = node.b if left else node.a
        if (left or node.b.same_as(var)) and isinstance(const, tirx.IntImm):
            at_c = (tirx.LT, tirx.GE) if left else (tirx.LE, tirx.GT)
            cuts.add(int(const) + (0 if isinstance(node, at_c) else 1))

    tvm_ffi.structural_walk(b.body, [(t, compare) for t in (tirx.LT, tirx.LE, tirx.GT, tirx.GE)])
    edges = [0, *sorted(c for c in cuts if 0 < c < extent), extent]
    if len(edges) > 2:  # the last part's extent is inferred
        return sch.loop_partition(loop, [hi - lo for lo, hi in zip(edges, edges[1:-1])] + [None])
    return None


#: A reduction over at least this many values per output reduces whole axes (a global pool, a
#: mean, softmax's sums), not a window (a 7x7 pool: 49).
_WHOLE_AXES = 64


def _whole_axes(sch, block, loops, kinds, outer: int) -> bool:
    """A reduction of one tensor (a conv or a matmul reads two: their reductions keep the
    loops LLVM vectorizes across outputs) whose loops are its output loops then
    :data:`_WHOLE_AXES` or more reduced values, one loop per axis (as legalized)."""
    if outer == 0 or len(loops) != len(kinds) or len(sch.get(block).reads) != 1:
        return False
    reduced = 1
    for loop in loops[outer:]:
        reduced *= _extent(sch, loop)
    return reduced >= _WHOLE_AXES and tirx.IterVar.DataPar not in kinds[outer:]


def _accumulate_in_register(sch, block, loops, outer: int) -> None:
    """Each output's sum in a register, written back once, the reduced axes fused into one
    long loop that LLVM vectorizes. As legalized, every step loads and stores the output
    element: PP-OCRv4 det's 96x80x80 global sum took 683 us of its 25 ms, 19 us so."""
    sch.fuse(*loops[outer:])
    out = sch.fuse(*loops[:outer])
    sch.parallel(out)
    sch.reverse_compute_at(sch.cache_write(block, 0, "local"), out)


def schedule_default(func: tirx.PrimFunc, intrin: DotProduct) -> tirx.PrimFunc:
    """``func`` scheduled by :func:`apply_default`."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    apply_default(sch, intrin)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def elementwise_default(
    mod: tvm.IRModule, intrin: DotProduct, name: str = "kernel"
) -> s_tir.Schedule | None:
    """What compile gives a kernel without a conv (``mod``'s ``main``) on ``intrin``'s target:
    :func:`apply_elementwise`'s schedule, or None where the kernel stays as legalized (still
    exact): on RVV, where LLVM's scalable vectorization of the plain loops did better (the
    bundled model: +0.6 % instructions with this schedule, the residual add and the concat
    +7 % and +28 %), or where the schedule cannot take it. Tuning measures it first
    (:mod:`.tune.first_candidates`): the two must not drift apart."""
    if intrin.scalable:
        return None
    sch = s_tir.Schedule(mod)
    try:
        apply_elementwise(sch)
    except (RuntimeError, ValueError) as err:
        log.info("%s: no elementwise schedule (%s)", name, err)
        return None
    return sch


@tvm.transform.module_pass(opt_level=0, name="DefaultDotSchedule")
class DefaultDotSchedule:
    """Schedule every packed or depthwise int8 kernel of the module not scheduled yet (no tuning
    record applied) with :func:`schedule_default`, every other kernel with
    :func:`apply_elementwise`."""

    def __init__(self, intrin: DotProduct):
        self.intrin = intrin

    def transform_module(self, mod, ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if (
                not isinstance(func, tirx.PrimFunc)
                or func.attrs is not None
                and func.attrs.get("tirx.is_scheduled", False)
            ):
                continue
            if not has_default(func):
                sch = elementwise_default(tvm.IRModule({"main": func}), self.intrin, gv.name_hint)
                if sch is not None:
                    updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                continue
            try:
                updates[gv] = schedule_default(func, self.intrin)
            except (RuntimeError, ValueError) as err:  # fall back: untensorized, still exact
                log.warning(
                    "%s: default %s schedule failed (%s); compiled untensorized",
                    gv.name_hint,
                    self.intrin.name,
                    str(err).splitlines()[0],
                )
        for gv, func in updates.items():
            mod[gv] = func
        return mod
