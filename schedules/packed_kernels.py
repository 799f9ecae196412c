"""TE computes of int8 conv2d/dense in the blocked layouts a dot-product instruction wants.

For an instruction computing ``C[i] += sum_k A[k] * B[i, k]`` over ``L`` lanes and ``K`` bytes
(x86 VNNI ``vpdpbusd``: ``L = 16``, ``K = 4``; ARM ``sdot``: ``4, 4``; RVV ``vwmacc``: ``16, 2``):

* activations ``NCHW`` -> ``N, C/K, H, W, K`` (:func:`pack_data`; spatial padding with the
  zero point and the +128 uint8 shift happen in the same pass);
* weights ``OIHW`` -> ``O/L, I/K, KH, KW, L, K`` (:func:`pack_weight`, numpy, at compile time;
  ``..., K, L`` for an instruction that wants each input channel's ``L`` weights as one
  vector: RVV);
* the conv accumulates ``N, O/L, OH, OW, L`` in int32 (the ``L`` output channels of one
  instruction are contiguous, the ``K`` input channels it reduces too); the layer's
  requantize (and lookup table) runs in that layout and writes it as int8
  (:func:`conv2d_requant`), which :func:`unpack` turns into ``NCHW``; a conv without a
  requantize writes its int32 result (with the correction of the shift) as ``NCHW``.

An instruction taking ``R > 1`` rows of activations (i8mm ``smmla``: ``R = 2`` pixels x
``L = 2`` channels x ``K = 8``; RVV: 4 pixels sharing each weight vector) gets ``R`` adjacent
output pixels of a row per step: the accumulator has an ``R`` axis inside the output columns,
which are padded up to a multiple of ``R`` (the input gets as many more padded columns), and
a strided conv's input is split by column phase so those pixels read adjacent columns.

A depthwise conv has no dot product to give an instruction: :func:`depthwise_blocked` runs
it in the packed conv's blocked layout ``N, C/L, H, W, L`` (a pixel's ``L`` channels one
vector, read from the conv's result with no unpack, written for :func:`unpack`), its padding,
requantize and lookup table inside; for an instruction whose lanes make no vector (i8mm) or
where column vectors do better (RVV), :func:`depthwise_requant` keeps ``NCHW``.

A transposed conv of stride ``s`` is one stride-1 packed conv over its input, its ``s*s``
output phases stacked as channels (:func:`transposed_phases`), followed by a depth to space
(:func:`unpack_phases`).

Channels are padded up to multiples of ``K`` and ``L`` with zero weights; the padded output
channels are computed and never stored. Per-channel constants are kernel *inputs*, not
immediates, so one tuned kernel serves every calibration of the same shapes.
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

#: Name of the accumulation block; the default schedule and `inspect` find kernels by it.
CONV_BLOCK = "conv2d_packed_int8"
#: Name of a depthwise conv's accumulation block (:func:`depthwise_requant`), and of its
#: padding stage.
DEPTHWISE_BLOCK = "depthwise_int8"
#: Name of the accumulation block of a depthwise conv in the blocked layout
#: (:func:`depthwise_blocked`).
DEPTHWISE_BLOCKED = "depthwise_int8_blocked"
PAD_BLOCK = "pad_input"
#: Name of the ``NCHW`` -> blocked packing of a depthwise conv's input (:func:`pack_blocked`).
BLOCK_PACK = "pack_blocked"
#: Names of a conv epilogue's stages (:func:`conv2d_requant`): the requantize, and a lookup
#: table after it.
REQUANT_BLOCK = "requantize"
LOOKUP_BLOCK = "lookup"


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pack_weight(
    w: np.ndarray, lanes: int, k: int, dtype: str = "int8", k_major: bool = False
) -> np.ndarray:
    """``OIHW`` int8 -> ``O/lanes, I/k, KH, KW, lanes, k`` of ``dtype`` (``k_major``:
    ``..., k, lanes``), zero-padded channels."""
    o, i, kh, kw = w.shape
    oo, io = ceil_div(o, lanes), ceil_div(i, k)
    padded = np.zeros((oo * lanes, io * k, kh, kw), dtype)
    padded[:o, :i] = w
    inner = (3, 1) if k_major else (1, 3)
    return np.ascontiguousarray(
        padded.reshape(oo, lanes, io, k, kh, kw).transpose(0, 2, 4, 5, *inner)
    )


def pack_data(
    x: te.Tensor, pad_value: te.Tensor, padding, k: int, offset: int, dtype: str, phases: int = 1
):
    """``NCHW`` int8 -> ``N, C/k, H + pads, W + pads, k`` of ``dtype``, every value ``+ offset``.

    ``padding`` is ``(top, left, bottom, right)``; padded positions hold ``pad_value + offset``
    (the layer's input zero point, a 0-d int8 tensor), padded channels hold 0 (their weights
    are 0). ``phases > 1`` (a strided conv for a multi-row instruction) splits the padded
    columns by ``column % phases`` -> ``N, C/k, H', phases, W'/phases, k``, so the columns one
    output row of pixels reads at stride ``phases`` are adjacent (see :func:`_accumulate`).
    """
    n, c, h, w = (int(d) for d in x.shape)
    top, left, bottom, right = padding
    width = w + left + right

    def value(b, co, y, xx, ci):
        ch = co * k + ci
        inside = tirx.all(y >= top, y < top + h, xx >= left, xx < left + w)
        v = tirx.if_then_else(inside, x[b, tirx.min(ch, c - 1), y - top, xx - left], pad_value[()])
        shifted = (v.astype("int32") + offset).astype(dtype)
        return tirx.if_then_else(ch < c, shifted, tirx.const(0, dtype))

    if phases == 1:
        return te.compute(
            (n, ceil_div(c, k), h + top + bottom, width, k),
            value,
            name="pack_int8",
            tag="injective",
        )
    return te.compute(
        (n, ceil_div(c, k), h + top + bottom, phases, ceil_div(width, phases), k),
        lambda b, co, y, p, j, ci: value(b, co, y, j * phases + p, ci),
        name="pack_int8",
        tag="injective",
    )


def pack_windows(
    x: te.Tensor,
    pad_value: te.Tensor,
    padding,
    kernel,
    strides,
    dilation,
    out_hw,
    width: int,
    k: int,
    offset: int,
    dtype: str,
):
    """``NCHW`` int8 -> ``N, C*KH*KB, OH, width, k`` of ``dtype`` (``KB = KW/k`` rounded up):
    for each output pixel, the input row segments its kernel window covers, ``k`` taps to a
    group (``g = (c * KH + ry) * KB + rx // k``, tap ``rx % k``), every value ``+ offset``; the
    conv becomes a 1x1 conv over it with :func:`window_weight`.

    For inputs with fewer channels than an instruction reduces at once (a first conv over a
    grey or RGB image), where padding the channels to ``k`` would multiply by zero in most of
    each dot product: a 3x3 conv of 1 channel takes 3 groups of 4 taps (one padded) instead of
    9 groups holding 1 value each. Taps off the input hold ``pad_value + offset`` (the zero
    point; ``padding`` is ``(top, left, bottom, right)``), taps past ``KW`` hold 0 (their
    weights are 0); columns past ``OW`` (up to ``width``, for a multi-row instruction) are
    computed and never stored."""
    n, c, h, w = (int(d) for d in x.shape)
    kh, kw = (int(d) for d in kernel)
    (sh, sw), (dh, dw) = strides, dilation
    top, left = padding[0], padding[1]
    blocks = ceil_div(kw, k)

    def value(b, g, y, xx, ci):
        ch, ry, rx = g // (kh * blocks), g // blocks % kh, g % blocks * k + ci
        iy, ix = y * sh + ry * dh - top, xx * sw + rx * dw - left
        inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        v = tirx.if_then_else(
            inside,
            x[b, ch, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, w - 1), 0)],
            pad_value[()],
        )
        shifted = (v.astype("int32") + offset).astype(dtype)
        return tirx.if_then_else(rx < kw, shifted, tirx.const(0, dtype))

    return te.compute(
        (n, c * kh * blocks, int(out_hw[0]), width, k), value, name="pack_int8", tag="injective"
    )


def window_weight(w: np.ndarray, k: int) -> np.ndarray:
    """``OIHW`` weights as the 1x1 conv over :func:`pack_windows`' layout: ``O, C*KH*KB*k, 1, 1``
    (the taps of each row segment, zero past ``KW``)."""
    o, c, kh, kw = w.shape
    padded = np.zeros((o, c, kh, ceil_div(kw, k) * k), w.dtype)
    padded[..., :kw] = w
    return padded.reshape(o, -1, 1, 1)


def pack_rows(x: te.Tensor, k: int, offset: int, dtype: str, width: int = 1):
    """A dense layer's ``M, K`` int8 input -> ``M, K/k, 1, width, k`` (a 1x1 conv over ``M``
    rows; columns past the first, for a multi-row instruction, hold 0), every value
    ``+ offset``; padded columns hold 0."""
    m, c = (int(d) for d in x.shape)

    def value(r, co, _y, xx, ci):
        ch = co * k + ci
        shifted = (x[r, tirx.min(ch, c - 1)].astype("int32") + offset).astype(dtype)
        inside = ch < c if width == 1 else tirx.all(ch < c, xx == 0)
        return tirx.if_then_else(inside, shifted, tirx.const(0, dtype))

    return te.compute((m, ceil_div(c, k), 1, width, k), value, name="pack_int8", tag="injective")


def padded_width(out_width: int, rows: int) -> int:
    """Output columns computed for ``out_width`` stored ones: a multiple of ``rows`` (the
    pixels one instruction takes); the extra ones are computed and never stored."""
    return ceil_div(out_width, rows) * rows


def _accumulate(xp: te.Tensor, wp: te.Tensor, strides, dilation, out_hw, rows: int, k_major: bool):
    """``N, O/L, OH, OW, L`` int32 (``rows == 1``), or ``N, O/L, OH, OW/R, R, L`` for an
    instruction taking ``R = rows`` pixels: pixel ``x = xb * R + r``. A strided conv's data is
    phase-split (:func:`pack_data`): column ``x * s + rx * d`` is at phase ``(rx * d) % s``,
    position ``x + (rx * d) // s``, so the ``R`` pixels read adjacent columns. ``k_major``:
    the weights are ``..., K, L`` (:func:`pack_weight`)."""
    n = int(xp.shape[0])
    oo, io, kh, kw, lanes, k = (int(d) for d in wp.shape)
    if k_major:
        lanes, k = k, lanes
    sh, sw = strides
    dh, dw = dilation
    oh, ow = out_hw
    phased = len(xp.shape) == 6
    rc = te.reduce_axis((0, io), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rk = te.reduce_axis((0, k), "rk")

    def column(x):
        if phased:
            return ((rx * dw) % sw, x + (rx * dw) // sw)
        return (x * sw + rx * dw,)

    def dot(b, o, y, x, l):  # noqa: E741  l: the lane (TE names the loop after it)
        return te.sum(
            xp[(b, rc, y * sh + ry * dh) + column(x) + (rk,)].astype("int32")
            * wp[(o, rc, ry, rx) + ((rk, l) if k_major else (l, rk))].astype("int32"),
            axis=[rc, ry, rx, rk],
        )

    if rows == 1:
        return te.compute((n, oo, oh, ow, lanes), dot, name=CONV_BLOCK)
    return te.compute(
        (n, oo, oh, ceil_div(ow, rows), rows, lanes),
        lambda b, o, y, xb, r, l: dot(b, o, y, xb * rows + r, l),  # noqa: E741
        name=CONV_BLOCK,
    )


def _acc_index(out_shape, lanes: int, rows: int):
    """Map an output index (NCHW, or a dense ``M, N``) to ``(accumulator index, channel)``."""
    if len(out_shape) == 4:

        def pixel(b, o, y, x):
            return (b, o // lanes, y, x) if rows == 1 else (b, o // lanes, y, x // rows, x % rows)
    else:

        def pixel(m, o):
            return (m, o // lanes, 0, 0) if rows == 1 else (m, o // lanes, 0, 0, 0)

    return lambda *i: (pixel(*i) + (i[1] % lanes,), i[1])


def _packed_acc(xp, wp, strides, dilation, out_shape, rows, k_major):
    out_hw = tuple(int(d) for d in out_shape[2:]) if len(out_shape) == 4 else (1, 1)
    acc = _accumulate(xp, wp, strides, dilation, out_hw, rows, k_major)
    return acc, _acc_index(out_shape, int(acc.shape[-1]), rows)


def conv2d_requant(
    xp,
    wp,
    mul,
    add,
    shift,
    lo,
    hi,
    strides,
    dilation,
    out_shape,
    rows: int = 1,
    k_major: bool = False,
    table=None,
    table_offset=None,
    clip_index=True,
    high_word=False,
):
    """Packed conv (or dense: 1x1 over ``M`` rows) + the layer's requantize (and lookup,
    :func:`_epilogue`) in the accumulator's blocked layout ``N, O/L, OH, OW, L`` (see
    :func:`unpack` for ``out_shape``); ``mul``..``hi`` are zero-padded to the ``O/L * L``
    channels of the blocks. A pixel's ``L`` channels are contiguous there, so the requantize
    runs on whole vectors and stores them whole (writing NCHW instead, each output would
    gather its accumulator at a stride of ``L`` words). Padded channels are computed, never
    unpacked."""
    acc, _ = _packed_acc(xp, wp, strides, dilation, out_shape, rows, k_major)
    lanes = int(acc.shape[-1])
    return _epilogue(
        acc,
        lambda i: i[1] * lanes + i[-1],
        mul,
        add,
        shift,
        lo,
        hi,
        table,
        table_offset,
        clip_index,
        high_word,
    )


def depthwise_requant(
    x,
    pad_value,
    w,
    mul,
    add,
    shift,
    lo,
    hi,
    padding,
    strides,
    dilation,
    out_shape,
    table=None,
    table_offset=None,
    clip_index=True,
    high_word=False,
):
    """Depthwise int8 conv (``groups == channels``, ``w``: ``C, KH, KW`` int8) + the layer's
    requantize (and lookup, :func:`_epilogue`), ``NCHW`` in and out, for the targets that do not
    block it (:attr:`.intrinsics.DotProduct.depthwise_blocked`): the schedule vectorizes along
    output columns (:func:`.default_schedule._apply_depthwise_nchw`). ``padding`` (``top, left,
    bottom, right``) is a stage of the kernel (:data:`PAD_BLOCK`, the input zero point
    ``pad_value``), so a channel's padded plane never leaves the cache."""
    n, c, h, wd = (int(d) for d in x.shape)
    top, left, bottom, right = padding
    if any(padding):
        xp = te.compute(
            (n, c, h + top + bottom, wd + left + right),
            lambda b, ch, y, xx: tirx.if_then_else(
                tirx.all(y >= top, y < top + h, xx >= left, xx < left + wd),
                x[b, ch, y - top, xx - left],
                pad_value[()],
            ),
            name=PAD_BLOCK,
            tag="injective",
        )
    else:
        xp = x
    kh, kw = (int(d) for d in w.shape[1:])
    (sh, sw), (dh, dw) = strides, dilation

    def taps(b, ch, y, xx):
        # The taps as one expression, not a reduction: a block with a reduction axis cannot be
        # vectorized along the output columns (TVM wants a loop over whole reductions there).
        return sum(
            xp[b, ch, y * sh + ry * dh, xx * sw + rx * dw].astype("int32")
            * w[ch, ry, rx].astype("int32")
            for ry in range(kh)
            for rx in range(kw)
        )

    acc = te.compute(tuple(out_shape), taps, name=DEPTHWISE_BLOCK)
    return _epilogue(
        acc, lambda i: i[1], mul, add, shift, lo, hi, table, table_offset, clip_index, high_word
    )


def pack_blocked(x: te.Tensor, lanes: int):
    """``NCHW`` int8 -> ``N, C/L, H, W, L`` int8 (``L = lanes``; padded channels hold 0): the
    layout of a packed conv's result (:func:`conv2d_requant`), for a depthwise conv whose input
    comes from anything else (:func:`depthwise_blocked`). Injective: FuseOps fuses it into the
    depthwise kernel, whose padding stage then reads the ``NCHW`` tensor itself."""
    n, c, h, w = (int(d) for d in x.shape)
    return te.compute(
        (n, ceil_div(c, lanes), h, w, lanes),
        lambda b, co, y, xx, ci: tirx.if_then_else(
            co * lanes + ci < c,
            x[b, tirx.min(co * lanes + ci, c - 1), y, xx],
            tirx.const(0, "int8"),
        ),
        name=BLOCK_PACK,
        tag="injective",
    )


def float32_exact(taps: int) -> bool:
    """True when a sum of ``taps`` products of an 8-bit activation (int8 or uint8) and an int8
    weight is exact in float32 in any order: every partial sum below ``2**24`` in magnitude."""
    return taps * 256 * 128 < 2**24


def depthwise_weight(w: np.ndarray, lanes: int, dtype: str) -> np.ndarray:
    """Depthwise weights ``C, KH, KW`` int8 -> ``C/L, KH, KW, L`` of ``dtype`` (zero-padded
    channels): a tap's ``L`` channels are one vector, as the blocked activations'. ``float32``
    (x86: the multiply-adds on the FMA units) only where every sum is exact in float32:
    :func:`float32_exact`; int32 otherwise."""
    c, kh, kw = w.shape
    if dtype == "float32" and not float32_exact(kh * kw):
        dtype = "int32"
    padded = np.zeros((ceil_div(c, lanes) * lanes, kh, kw), dtype)
    padded[:c] = w
    return np.ascontiguousarray(padded.reshape(-1, lanes, kh, kw).transpose(0, 2, 3, 1))


def depthwise_blocked(
    xb,
    pad_value,
    w,
    mul,
    add,
    shift,
    lo,
    hi,
    in_hw,
    padding,
    strides,
    dilation,
    out_hw,
    table=None,
    table_offset=None,
    clip_index=True,
    high_word=False,
):
    """Depthwise int8 conv + the layer's requantize (and lookup, :func:`_epilogue`) in a packed
    conv's blocked layout: ``xb`` is ``N, C/L, H, W, L`` as :func:`conv2d_requant` writes it
    (one-row instructions), ``w`` is :func:`depthwise_weight`'s ``C/L, KH, KW, L``; the result
    is ``N, C/L, OH, OW, L`` int8, which :func:`unpack` reads: a packed conv's result feeds it
    and its result feeds the next packing with no layout change in between. A pixel's ``L``
    channels are one vector: each tap is a vector multiply-add, the requantize runs on whole
    vectors. ``in_hw`` is the input's height and width; ``padding`` (``top, left, bottom,
    right``) holds the zero point ``pad_value``, in a stage of the kernel (:data:`PAD_BLOCK`)
    that the schedule builds per channel block."""
    n, cb = (int(d) for d in xb.shape[:2])
    lanes = int(xb.shape[-1])
    h, wd = in_hw
    top, left, bottom, right = padding
    kh, kw = (int(d) for d in w.shape[1:3])
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = out_hw
    exact_float = w.dtype == "float32"
    if exact_float and not float32_exact(kh * kw):
        raise ValueError(f"a {kh}x{kw} depthwise conv's sums are not exact in float32")
    if any(padding) or exact_float:
        # float32 weights: the plane is converted once here, not at each of its kh*kw reads.
        plane = "float32" if exact_float else xb.dtype
        xp = te.compute(
            (n, cb, h + top + bottom, wd + left + right, lanes),
            lambda b, c, y, xx, li: tirx.if_then_else(
                tirx.all(y >= top, y < top + h, xx >= left, xx < left + wd),
                xb[b, c, y - top, xx - left, li].astype(plane),
                pad_value[()].astype(plane),
            ),
            name=PAD_BLOCK,
            tag="injective",
        )
    else:
        xp = xb

    def window(b, c, y, xx, li, ry, rx):
        return xp[b, c, y * sh + ry * dh, xx * sw + rx * dw, li]

    if exact_float:
        # A reduction over the taps (float32, exact): the schedule runs it tap by tap over a
        # tile of pixels whose accumulators stay in registers, each weight vector loaded once
        # per tile (PP-OCR cls's 5x5: 36 -> 25 us).
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        acc = te.compute(
            (n, cb, oh, ow, lanes),
            lambda b, c, y, xx, li: te.sum(
                window(b, c, y, xx, li, ry, rx) * w[c, ry, rx, li], axis=[ry, rx]
            ),
            name=DEPTHWISE_BLOCKED,
        )
    else:
        # One expression, not a reduction: the tile's pixels and lanes vectorize around it.
        acc = te.compute(
            (n, cb, oh, ow, lanes),
            lambda b, c, y, xx, li: sum(
                window(b, c, y, xx, li, ry, rx).astype("int32") * w[c, ry, rx, li].astype("int32")
                for ry in range(kh)
                for rx in range(kw)
            ),
            name=DEPTHWISE_BLOCKED,
        )
    return _epilogue(
        acc,
        lambda i: i[1] * lanes + i[-1],
        mul,
        add,
        shift,
        lo,
        hi,
        table,
        table_offset,
        clip_index,
        high_word,
    )


def _epilogue(acc, channel, mul, add, shift, lo, hi, table, table_offset, clip_index, high_word):
    """The layer's requantize of an int32 ``acc`` (or a float32 one holding exact integers),
    ``q = int8(clip((int64(acc) * MUL + ADD) >> S, lo, hi))`` with the constants of output
    channel ``channel(index)`` (int64 vectors, ``mul`` possibly int32), as :data:`REQUANT_BLOCK`.
    With ``high_word`` (every ``S >= 32``), ``shift``, ``lo`` and ``hi`` are int32 and ``shift``
    holds ``S - 32``: the same integers, with the shift and clip in 32 bits.

    With ``table`` (a flat int8 lookup table) the kernel writes ``table[q + table_offset[o]]``
    instead (with ``clip_index``, the index clipped to the table, as the graph's
    ``take(mode="clip")``; without, the caller knows it stays inside): the following nonlinear
    layer's lookup in the same pass, as a stage of its own (:data:`LOOKUP_BLOCK`)."""

    def requant(*i):
        o = channel(i)
        v = acc[i].astype("int32").astype("int64") * mul[o].astype("int64") + add[o]
        if high_word:
            # x >> S == (x >> 32) >> (S - 32) exactly, and x >> 32 fits int32: the shift and
            # clip run on int32 lanes (no 64-bit arithmetic shift or compare in AVX2 or NEON).
            v = (v >> 32).astype("int32")
        v = v >> shift[o]
        return te.max(te.min(v, hi[o]), lo[o]).astype("int8")

    q = te.compute(acc.shape, requant, name=REQUANT_BLOCK, tag="elemwise")
    if table is None:
        return q
    top = int(table.shape[0]) - 1

    def lookup(*i):
        index = q[i].astype("int32") + table_offset[channel(i)]
        return table[te.max(te.min(index, top), 0) if clip_index else index]

    # Its own stage: TVM vectorizes a gather only by scalarizing the whole expression, so a
    # schedule that keeps the requantize apart vectorizes it (default_schedule).
    return te.compute(acc.shape, lookup, name=LOOKUP_BLOCK, tag="elemwise")


def lookup(table: te.Tensor, index: te.Tensor, clip_index: bool = True):
    """``table[index]`` (a 1-D int8 table, an int32 index of any shape; ``clip_index``: the
    index clipped to the table, as ``take(mode="clip")``): a lookup table applied where no
    packed kernel's epilogue takes it. A stage of its own kind (:data:`LOOKUP_BLOCK`), which
    the packing pass marks injective, so FuseOps fuses the index computation before it and the
    next packing after it (``take`` is opaque to FuseOps: a kernel of its own, with its int32
    index written and read back)."""
    top = int(table.shape[0]) - 1

    def value(*i):
        return table[te.max(te.min(index[i], top), 0) if clip_index else index[i]]

    return te.compute(tuple(index.shape), value, name=LOOKUP_BLOCK, tag="injective")


def unpack(q: te.Tensor, out_shape, rows: int = 1):
    """A blocked conv result (:func:`conv2d_requant`) as ``out_shape``: NCHW, or ``M, channels``
    for a dense layer."""
    index = _acc_index(tuple(out_shape), int(q.shape[-1]), rows)
    return te.compute(tuple(out_shape), lambda *i: q[index(*i)[0]], name="unpack", tag="injective")


def transposed_phases(w: np.ndarray, strides, padding, in_hw, out_hw):
    """A stride-``s`` transposed conv as one stride-1 conv over its input, its ``s*s`` output
    phases stacked as channels (phase decomposition; dilation 1, one group).

    ``w`` is the transposed conv's ``IOHW`` int8 weight, ``padding`` its ``(top, left,
    bottom, right)``. Output row ``y`` is phase ``p = (y + top) % s`` of row
    ``m = (y + top) // s``, and sums ``x[m - t] * w[p + s t]`` over the ``T = ceil(K / s)``
    taps ``t``: a correlation of the input (padded by ``T - 1`` above) with that phase's taps
    in reverse. Returns ``(weight, conv padding, first)``: the ``OIHW`` weight of ``O*s*s``
    channels (channel ``(o * s + py) * s + px``; taps past ``K`` hold 0), the stride-1 conv's
    ``(top, left, bottom, right)`` padding of the input (positions off the input contribute
    nothing: the caller pads with the input zero point, whose code is 0 there), and the
    ``(m, m)`` of its first output row and column. Raises ValueError when the transposed conv's
    padding is wider than ``T - 1`` rows of the input (a crop, not a pad)."""
    cin, o, kh, kw = w.shape
    (sh, sw), (top, left) = strides, padding[:2]
    taps = (ceil_div(kh, sh), ceil_div(kw, sw))
    weight = np.zeros((o, sh, sw, cin, taps[0], taps[1]), w.dtype)
    for py in range(sh):
        for px in range(sw):
            for ty in range(taps[0]):
                for tx in range(taps[1]):
                    ky, kx = py + sh * (taps[0] - 1 - ty), px + sw * (taps[1] - 1 - tx)
                    if ky < kh and kx < kw:
                        weight[:, py, px, :, ty, tx] = w[:, :, ky, kx].T
    first = (top // sh, left // sw)
    last = ((out_hw[0] - 1 + top) // sh, (out_hw[1] - 1 + left) // sw)
    pad_before = [t - 1 - f for t, f in zip(taps, first)]
    if min(pad_before) < 0:
        raise ValueError("transposed conv padding wider than its taps")
    pad_after = [max(0, la - (n - 1)) for la, n in zip(last, in_hw)]
    conv_padding = (pad_before[0], pad_before[1], pad_after[0], pad_after[1])
    return weight.reshape(o * sh * sw, cin, *taps), conv_padding, first


def unpack_phases(q: te.Tensor, out_shape, strides, padding, first, rows: int = 1):
    """The blocked result of :func:`transposed_phases`' conv (as :func:`conv2d_requant` writes
    it for ``rows``) as the transposed conv's ``NCHW`` output: ``y[o, y, x]`` is phase
    ``((y + top) % s)`` of the conv's row ``(y + top) // s - first`` (depth to space)."""
    lanes = int(q.shape[-1])
    (sh, sw), (top, left) = strides, padding[:2]

    def value(b, o, y, x):
        c = (o * sh + (y + top) % sh) * sw + (x + left) % sw
        row, col = (y + top) // sh - first[0], (x + left) // sw - first[1]
        pixel = (col,) if rows == 1 else (col // rows, col % rows)
        return q[(b, c // lanes, row) + pixel + (c % lanes,)]

    return te.compute(tuple(out_shape), value, name="unpack", tag="injective")


def conv2d_int32(
    xp, wp, correction, strides, dilation, out_shape, rows: int = 1, k_major: bool = False
):
    """Packed conv (or dense) with a plain int32 result: ``acc - correction[o]`` (the shifted
    input's ``offset * sum(Qw)``), written unpacked as ``out_shape``."""
    acc, index = _packed_acc(xp, wp, strides, dilation, out_shape, rows, k_major)

    def corrected(*i):
        a, o = index(*i)
        return acc[a] - correction[o]

    return te.compute(tuple(out_shape), corrected, name="unpack", tag="elemwise")
