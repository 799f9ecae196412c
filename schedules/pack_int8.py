"""Lay int8 conv2d/dense out for a dot-product instruction: a Relax pass run at build time.

The integer program (what :func:`tvm_intq.evaluation.reference.run_reference` evaluates) stays as
:class:`~tvm_intq.relay_passes.FoldToInteger` wrote it; only the module being compiled for a
target whose definition names a dot-product intrinsic (``TargetSpec.int8_dot``) is rewritten::

    pad(x, zp) -> conv2d_i32(., Qw) -> astype i64 -> *MUL -> +ADD -> >>S -> clip -> astype i8
        [-> astype i32 -> + offsets -> take(table)]                (a nonlinear layer's lookup)
        ==>  xp = pack_int8(x, zp)                      N, C/4, H', W', 4   (uint8: x + 128)
             yp = conv2d_packed_int8_requant[_lookup](xp, Wp, MUL, ADD', S, lo, hi[, table])
                                                                N, O/16, H, W, 16 int8
             y  = unpack(yp)                                             NCHW int8

with ``Wp = Qw`` as ``O/16, I/4, KH, KW, 16, 4`` (for VNNI: ``O/L, I/K, .., L, K`` of the
instruction, packed here, at compile time; an instruction taking ``R`` pixels pads and, for a
strided conv, phase-splits the input, see :mod:`.packed_kernels`) and
``ADD' = ADD - MUL * 128 * sum(Qw)`` (:func:`tvm_intq.core.intmath.shifted_input_requant`;
``ADD' = ADD`` for a signed x signed instruction), so the result is the same integers.
The kernel requantizes (and looks up) in the accumulator's blocked layout, where a pixel's
channels are one vector; ``unpack`` is an injective op that FuseOps fuses into the next
kernel (the next conv's ``pack_int8`` then reads the blocked layout directly). A requantize
after the lookup (to a concat's scale, say) is folded into the table. A conv over 1 or 2
input channels packs its kernel windows instead of padding the channels to ``k``
(:func:`.packed_kernels.pack_windows`).
A dense ``matmul(x, Qw)`` is the same kernel as a 1x1 conv over the rows of ``x``. A
conv2d/matmul not followed by that requantize keeps an int32 result (``acc - 128 * sum(Qw)``).
A depthwise conv (one input channel per output: no dot product to tensorize) with its
requantize becomes :func:`.packed_kernels.depthwise_blocked`, its padding and lookup table
inside, in the blocked layout: it reads a packed conv's result as the conv wrote it (no
``unpack``/``pack`` between them; an input from elsewhere is blocked by an injective stage
FuseOps fuses into it) and is unpacked after it (i8mm, RVV: ``depthwise_requant``, NCHW in
and out). A transposed conv (FoldToInteger's ``conv2d_transpose`` of the input centred on its
zero point) with its requantize becomes one packed conv over the input padded with the zero
point, its ``s*s`` output phases stacked as channels, and a depth to space
(:func:`.packed_kernels.transposed_phases`); the correction ``(zp + 128) * sum(Qw)`` of each
phase's taps folds into ``ADD'``, so it is exact at the borders too. Other grouped convs,
non-constant weights and other layouts are left as they are (compiled untensorized, still
exact).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.core.intmath import QMAX, QMIN, Requant, shifted_input_requant
from tvm_intq.relay_passes.analysis.ir_utils import (
    channel_axis_of,
    const_value,
    dtype_of,
    op_name,
    shape_of,
)
from tvm_intq.relay_passes.analysis.rebuild import bindings_of, rewrite_main, users_of
from tvm_intq.relay_passes.ops.requantize import NAME as REQUANTIZE
from tvm_intq.relay_passes.ops.requantize import requant_of
from tvm_intq.schedules import packed_kernels as P
from tvm_intq.schedules.intrinsics import DotProduct

#: TVM's ``OpPatternKind::kInjective`` (the ``op_pattern`` attribute FuseOps reads).
_INJECTIVE = 2


# The requantize FoldToInteger emits after an int8 conv/matmul (integer_kernels.requantize).
def _per_channel(value: np.ndarray, ndim: int, axis: int, channels: int) -> np.ndarray | None:
    """A constant broadcast against an ``ndim``-D accumulator as a vector over ``axis``."""
    where = channel_axis_of(value, ndim)
    if where is False or where not in (None, axis):
        return None
    return np.broadcast_to(
        value.reshape(-1) if where == axis else value.reshape(()), (channels,)
    ).astype(np.int64)


def _single_user(var, users, op: str):
    """The binding of the only use of ``var``, if it is an ``op`` call reading ``var`` as its
    data (the index of a ``take``); None otherwise."""
    consumers = users.get(var, [])
    if len(consumers) != 1 or consumers[0] is None:
        return None
    b = consumers[0]
    if op_name(b.value) != op:
        return None
    return b if b.value.args[1 if op == "relax.take" else 0].same_as(var) else None


def _requant_chain(acc_var, users, ndim: int, axis: int, channels: int):
    """``([binding], Requant)`` of the ``intq.requantize`` reading ``acc_var``, its constants
    as vectors over ``axis``; None if there is none, or its constants are not per channel."""
    b = _single_user(acc_var, users, REQUANTIZE)
    rq = None if b is None else requant_of(b.value)
    if rq is None:
        return None
    vectors = [_per_channel(c, ndim, axis, channels) for c in (rq.mul, rq.add, rq.shift)]
    if any(v is None for v in vectors):
        return None
    return [b], Requant(*vectors, lo=rq.lo, hi=rq.hi)


def _lookup_tail(q_var, users, ndim: int, axis: int, channels: int):
    """``(bindings, table, offsets)`` when the int8 ``q_var`` feeds only a lookup table
    (:func:`tvm_intq.relay_passes.ops.integer_kernels.lookup`: ``take(table, astype(q, int32) +
    offsets, mode="clip")``), ``offsets`` an int32 vector over ``axis``; None otherwise."""
    cast = _single_user(q_var, users, "relax.astype")
    if cast is None or dtype_of(cast.var) != "int32":
        return None
    tail, var, offsets = [cast], cast.var, np.zeros(channels, np.int64)
    while (add := _single_user(var, users, "relax.add")) is not None:
        c = const_value(add.value.args[1])
        v = None if c is None else _per_channel(c, ndim, axis, channels)
        if v is None:
            return None
        tail.append(add)
        offsets, var = offsets + v, add.var
    take = _single_user(var, users, "relax.take")
    table = None if take is None else const_value(take.value.args[0])
    if (
        table is None
        or table.dtype != np.int8
        or table.ndim != 1
        or int(take.value.attrs.axis) != 0
        or str(take.value.attrs.mode) != "clip"
    ):
        return None
    tail.append(take)
    # A requantize of the looked-up values (to a concat's or an add's scale) is a function of
    # the same int8 code: fold it into the table, so the kernel writes the requantized value.
    while (found := _requant_chain(tail[-1].var, users, ndim, axis, channels)) is not None:
        chain, rq = found
        table, offsets = _requantized_table(table, offsets, rq)
        tail += chain
    return tail, table, offsets.astype(np.int32)


def _requantized_table(table: np.ndarray, offsets: np.ndarray, rq: Requant):
    """``(table', offsets')`` with ``table'[q + offsets'[c]] == rq(table[q + offsets[c]])`` for
    every int8 ``q`` of channel ``c``: one 256-entry table, or one per channel (channel-major)
    when the result differs between channels."""
    q = np.arange(QMIN, QMAX + 1)
    looked_up = table[np.clip(q[None, :] + offsets[:, None], 0, len(table) - 1)]
    out = Requant(rq.mul[:, None], rq.add[:, None], rq.shift[:, None], rq.lo, rq.hi).apply(
        looked_up
    )
    if np.all(out == out[:1]):
        return out[0], np.full(len(offsets), -QMIN, np.int64)
    return out.reshape(-1), -QMIN + 256 * np.arange(len(offsets), dtype=np.int64)


def _spatial_pad(var, users, defs):
    """``(input, (top, left, bottom, right), pad value)`` when ``var`` is a constant pad of the
    spatial axes used only by the conv; None otherwise."""
    value = defs.get(var)
    if op_name(value) != "relax.nn.pad" or len(users.get(var, [])) != 1:
        return None
    a = value.attrs
    w = [int(p) for p in a.pad_width]
    if str(a.pad_mode) != "constant" or len(w) != 8 or any(w[:4]):
        return None
    return value.args[0], (w[4], w[6], w[5], w[7]), float(a.pad_value)


def _standalone_lookup(value) -> bool:
    """A ``take`` of a 1-D int8 constant table at an int32 index (a lookup table the folding
    emits; :func:`tvm_intq.relay_passes.ops.integer_kernels.lookup`) that no packed kernel
    absorbed."""
    if op_name(value) != "relax.take":
        return False
    table = const_value(value.args[0])
    return (
        table is not None
        and table.ndim == 1
        and table.dtype == np.int8
        and dtype_of(value.args[1]) == "int32"
        and int(value.attrs.axis) == 0
        and str(value.attrs.mode) == "clip"
    )


class _Plan:
    """What to emit for one conv/matmul: found before the rewrite, applied during it.
    ``windows``: pack the input's kernel windows (:func:`.packed_kernels.pack_windows`);
    ``lookup``: the ``(table, offsets)`` of a lookup table the kernel applies after its
    requantize."""

    def __init__(self, kind, weight, channels, pad=None, windows=False):
        self.kind, self.weight, self.channels, self.pad = kind, weight, channels, pad  # OIHW int8
        self.windows = windows
        self.chain = self.rq = self.lookup = None
        self.transposed = None  # a transposed conv's _Transposed

    @property
    def out(self):
        """The var whose value the packed kernel computes (the last binding it absorbs)."""
        return self.chain[-1].var if self.chain is not None else None


def _windows_pay(weight: np.ndarray, intrin: DotProduct) -> bool:
    """Pack kernel windows when padding the input channels to the instruction's ``k`` would
    leave at least 3/4 of every dot product zero (1 channel for k = 4, 2 for i8mm's 8). At
    RVV's k = 2 the packing costs more than the halved dot products save (llvm-mca, P670)."""
    _, c, _, kw = weight.shape
    return 4 * c <= intrin.k and kw > 1


class _Transposed:
    """A transposed conv as :func:`.packed_kernels.transposed_phases` computes it: the int8
    input (``cast``: the binding of ``astype(x, int32)``, ``centred``: of ``- zp``, as
    :func:`tvm_intq.relay_passes.ops.integer_kernels.conv2d_transpose` writes them), the
    zero point, the stacked weight and the padding of its stride-1 conv."""

    def __init__(self, cast, centred, zp, strides, padding, conv_padding, first, conv_hw):
        self.cast, self.centred, self.zp = cast, centred, zp
        self.strides, self.padding = strides, padding
        self.conv_padding, self.first, self.conv_hw = conv_padding, first, conv_hw


def _transposed(b, defs, users):
    """``(_Transposed, OIHW weight)`` of a ``conv2d_transpose`` binding ``b`` of zero-point
    centred int8 codes with an int8-valued constant weight, stride-1-decomposable (one group,
    no dilation, ``NCHW``/``IOHW``); None otherwise."""
    call = b.value
    a = call.attrs
    w = const_value(call.args[1])
    centred = call.args[0]
    sub = defs.get(centred)
    if (
        w is None
        or w.ndim != 4
        or np.abs(w.astype(np.int64)).max(initial=0) > QMAX
        or int(a.groups) != 1
        or any(int(d) != 1 for d in a.dilation)
        or str(a.data_layout) != "NCHW"
        or str(a.kernel_layout) != "IOHW"
        or op_name(sub) != "relax.subtract"
    ):
        return None
    zp = const_value(sub.args[1])
    cast = defs.get(sub.args[0])
    if (
        zp is None
        or zp.size != 1
        or op_name(cast) != "relax.astype"
        or dtype_of(cast.args[0]) != "int8"
        or shape_of(cast.args[0]) is None
    ):
        return None
    x = cast.args[0]
    strides = tuple(int(v) for v in a.strides)
    padding = tuple(int(v) for v in a.padding)  # top, left, bottom, right
    out_hw = shape_of(b.var)[2:]
    try:
        weight, conv_padding, first = P.transposed_phases(
            w.astype(np.int8), strides, padding, shape_of(x)[2:], out_hw
        )
    except ValueError:
        return None
    last = [(o - 1 + p) // s for o, p, s in zip(out_hw, padding[:2], strides)]
    conv_hw = tuple(la - f + 1 for la, f in zip(last, first))
    info = _Transposed(
        sub.args[0], centred, int(zp.reshape(())), strides, padding, conv_padding, first, conv_hw
    )
    return info, weight


def _expand_phases(rq: Requant, phases: int) -> Requant:
    """``rq``'s per-channel constants repeated for each of a channel's ``phases`` stacked
    output channels (:func:`.packed_kernels.transposed_phases`)."""
    return Requant(
        *(np.repeat(np.asarray(v, np.int64), phases) for v in (rq.mul, rq.add, rq.shift)),
        lo=rq.lo,
        hi=rq.hi,
    )


def _plan_transposed(b, defs, users, intrin: DotProduct):
    found = _transposed(b, defs, users)
    if found is None:
        return None
    info, weight = found
    channels = shape_of(b.var)[1]
    phases = info.strides[0] * info.strides[1]
    chain = _requant_chain(b.var, users, 4, 1, channels)
    if chain is None:
        return None
    plan = _Plan("transposed", weight, channels * phases)
    plan.transposed = info
    other = (1, 2, 3)
    wsum = weight.astype(np.int64).sum(axis=other)
    wabs = np.abs(weight.astype(np.int64)).sum(axis=other)
    # The packed conv multiplies x + offset, padded with the zero point: its accumulator
    # exceeds the transposed conv's of x - zp by (zp + offset) * sum(Qw) of each phase's taps.
    try:
        plan.rq = shifted_input_requant(
            _expand_phases(chain[1], phases), wsum, wabs, info.zp + intrin.input_offset
        )
    except ValueError:
        return None
    plan.chain = chain[0]
    tail = _lookup_tail(plan.out, users, 4, 1, channels)
    if tail is not None:
        plan.chain = plan.chain + tail[0]
        table, offsets = tail[1:]
        plan.lookup = table, np.repeat(offsets, phases)
    return plan


def _plan(func, intrin: DotProduct) -> tuple[dict, set]:
    users = users_of(func)
    defs = {b.var: b.value for b in bindings_of(func)}
    plans, skipped = {}, set()
    for b in bindings_of(func):
        call = b.value
        name = op_name(call)
        if name == "relax.nn.conv2d_transpose" and dtype_of(b.var) == "int32":
            plan = _plan_transposed(b, defs, users, intrin)
            if plan is not None:
                plans[b.var] = plan
                skipped.update(c.var for c in plan.chain)
                # The cast and centring of the input, when only the transposed conv reads them.
                t = plan.transposed
                if len(users.get(t.centred, [])) == 1:
                    skipped.add(t.centred)
                    if len(users.get(t.cast, [])) == 1:
                        skipped.add(t.cast)
            continue
        if name not in ("relax.nn.conv2d", "relax.matmul") or dtype_of(b.var) != "int32":
            continue
        x, w = call.args[0], const_value(call.args[1])
        if w is None or w.dtype != np.int8 or dtype_of(x) != "int8" or shape_of(x) is None:
            continue
        if name == "relax.nn.conv2d":
            a = call.attrs
            if (
                str(a.data_layout) != "NCHW"
                or str(a.kernel_layout) != "OIHW"
                or str(a.out_layout) != "NCHW"
                or any(int(p) for p in a.padding)
            ):
                continue
            groups = int(a.groups)
            if groups == 1:
                kind = "conv2d"
            elif groups == shape_of(x)[1] == w.shape[0] and w.shape[1] == 1:
                kind = "depthwise"
            else:
                continue
            weight, ndim = w, 4
        else:
            if len(shape_of(x)) != 2 or w.ndim != 2:
                continue
            kind, weight, ndim = "dense", np.ascontiguousarray(w.T)[:, :, None, None], 2
        channels = weight.shape[0]
        found = _requant_chain(b.var, users, ndim, 1, channels)
        if kind == "depthwise" and found is None:
            continue  # an int32 result: left to TVM's conv2d
        pad = _spatial_pad(x, users, defs) if kind != "dense" else None
        plan = _Plan(
            kind,
            weight,
            channels,
            pad=pad,
            windows=kind == "conv2d" and _windows_pay(weight, intrin),
        )
        if kind == "depthwise":  # signed x signed, no instruction: the requantize as it is
            plan.chain, plan.rq = found
        elif found is not None:
            plan.chain, rq = found
            other = tuple(range(1, weight.ndim))
            wsum = weight.astype(np.int64).sum(axis=other)
            wabs = np.abs(weight.astype(np.int64)).sum(axis=other)
            try:
                plan.rq = shifted_input_requant(rq, wsum, wabs, intrin.input_offset)
            except ValueError:
                plan.chain = None  # keep the int32 accumulator; the requantize stays as it is
        if plan.chain is not None:
            tail = _lookup_tail(plan.out, users, ndim, 1, channels)
            if tail is not None:
                plan.chain = plan.chain + tail[0]
                plan.lookup = tail[1:]
            skipped.update(c.var for c in plan.chain)
        if pad is not None:
            skipped.add(x)
        plans[b.var] = plan
    return plans, skipped


def _const(v, dtype):
    return relax.const(np.asarray(v).astype(dtype), dtype)


def _input_padding(b, value, plan: _Plan, padded: dict):
    """``(input, (top, left, bottom, right), zero point as a 0-d int8 constant)`` of the conv
    ``b`` (rewritten: ``value``) whose spatial pad ``plan`` absorbs (none: the input as it is)."""
    if plan.pad is None:
        return value.args[0], (0, 0, 0, 0), _const(0, "int8")
    x, padding, pad_value = padded[b.value.args[0]]
    return x, padding, _const(int(pad_value), "int8")


def _epilogue_args(plan: _Plan, lanes: int):
    """The requantize constants (and lookup table) a kernel takes, per output channel,
    zero-padded to whole blocks of ``lanes`` (the kernel reads them as vectors):
    ``(positional args, keyword args, name suffix)``."""
    rq, o = plan.rq, plan.channels
    blocked = P.ceil_div(o, lanes) * lanes

    def by_channel(v):  # a scalar or per-channel constant as one value per channel
        return np.broadcast_to(np.asarray(v, np.int64), (o,))

    def per_channel(v, dtype):
        return _const(np.pad(by_channel(v), (0, blocked - o)), dtype)

    # A multiplier that fits int32 is passed as int32: its int64 product then compiles to a
    # 32x32->64 multiply (x86 vpmuldq: one uop, vpmullq's 64x64 takes three).
    mul32 = bool(np.all(np.abs(np.asarray(rq.mul)) < 2**31))
    args = [per_channel(rq.mul, "int32" if mul32 else "int64"), per_channel(rq.add, "int64")]
    # Every shift >= 32 (a multiplier below 1/2, as most convs have): the kernel keeps the
    # product's high word and shifts and clips it in int32 (packed_kernels._epilogue).
    high_word = mul32 and bool(np.all(np.asarray(rq.shift) >= 32))
    if high_word:
        args += [per_channel(np.asarray(rq.shift) - 32, "int32")]
        args += [per_channel(v, "int32") for v in (rq.lo, rq.hi)]
    else:
        args += [per_channel(v, "int64") for v in (rq.shift, rq.lo, rq.hi)]
    kwargs = {"high_word": high_word}
    if plan.lookup is None:
        return args, kwargs, ""
    table, offsets = plan.lookup
    # The index clip of take(mode="clip") is only emitted when an index can leave the table
    # (it costs a compare and select per output on a scalar gather).
    inside = bool(
        np.all(by_channel(rq.lo) + offsets >= 0)
        and np.all(by_channel(rq.hi) + offsets < len(table))
    )
    return (
        args,
        dict(
            kwargs,
            table=relax.const(table),
            table_offset=per_channel(offsets, "int32"),
            clip_index=not inside,
        ),
        "_lookup",
    )


def _emit_depthwise_nchw(bb, b, value, plan: _Plan, padded: dict):
    x, padding, pad_value = _input_padding(b, value, plan, padded)
    args, lookup, suffix = _epilogue_args(plan, 1)
    a = value.attrs
    return bb.emit(
        bb.call_te(
            P.depthwise_requant,
            x,
            pad_value,
            relax.const(np.ascontiguousarray(plan.weight[:, 0])),
            *args,
            padding=padding,
            strides=tuple(int(s) for s in a.strides),
            dilation=tuple(int(d) for d in a.dilation),
            out_shape=tuple(int(d) for d in shape_of(plan.out)),
            **lookup,
            primfunc_name_hint="depthwise_int8_requant" + suffix,
        ),
        plan.out.name,
    )


def _emit_depthwise(bb, b, value, plan: _Plan, intrin: DotProduct, padded: dict, blocked: dict):
    if not intrin.depthwise_blocked:
        return _emit_depthwise_nchw(bb, b, value, plan, padded)
    x, padding, pad_value = _input_padding(b, value, plan, padded)
    lanes = intrin.lanes
    # A packed conv's result is read as it is (no unpack); anything else is blocked first
    # (an injective stage FuseOps fuses into this kernel).
    xb = blocked.get(x)
    if xb is None:
        xb = bb.emit_te(P.pack_blocked, x, lanes=lanes, primfunc_name_hint="pack_blocked")
    args, lookup, suffix = _epilogue_args(plan, lanes)
    a = value.attrs
    out_shape = tuple(int(d) for d in shape_of(plan.out))
    packed = bb.emit_te(
        P.depthwise_blocked,
        xb,
        pad_value,
        relax.const(P.depthwise_weight(plan.weight[:, 0], lanes, intrin.depthwise_dtype)),
        *args,
        in_hw=tuple(int(d) for d in shape_of(x)[2:]),
        padding=padding,
        strides=tuple(int(s) for s in a.strides),
        dilation=tuple(int(d) for d in a.dilation),
        out_hw=out_shape[2:],
        **lookup,
        primfunc_name_hint="depthwise_int8_requant" + suffix,
    )
    out = bb.emit(
        bb.call_te(P.unpack, packed, out_shape=out_shape, primfunc_name_hint="unpack"),
        plan.out.name,
    )
    blocked[out] = packed
    return out


def _emit(bb, b, value, plan: _Plan, intrin: DotProduct, padded: dict, blocked: dict, sources):
    """Emit the packed kernels of ``plan``; ``blocked`` maps each emitted ``unpack``'s result
    to the blocked tensor it unpacks (a depthwise conv reads that instead); ``sources`` maps
    each binding's var to its value, rewritten."""
    if plan.kind == "depthwise":
        return _emit_depthwise(bb, b, value, plan, intrin, padded, blocked)
    attrs = value.attrs if plan.kind == "conv2d" else None
    weight = plan.weight
    out = plan.out if plan.chain is not None else b.var
    out_shape = tuple(int(d) for d in shape_of(out))
    final_shape = out_shape
    if plan.kind == "transposed":  # a stride-1 conv over the input, then depth to space
        t = plan.transposed
        out_shape = (out_shape[0], plan.channels) + t.conv_hw
    rows = intrin.rows
    packing = dict(
        k=intrin.k,
        offset=intrin.input_offset,
        dtype=intrin.data_dtype,
        primfunc_name_hint="pack_int8",
    )
    if plan.kind in ("conv2d", "transposed"):
        if plan.kind == "transposed":
            x = sources[plan.transposed.cast].args[0]
            padding, pad_value = t.conv_padding, _const(t.zp, "int8")
            strides, dilation = (1, 1), (1, 1)
        else:
            x, padding, pad_value = _input_padding(b, value, plan, padded)
            strides = tuple(int(s) for s in attrs.strides)
            dilation = tuple(int(d) for d in attrs.dilation)
        if plan.windows:
            xp = bb.emit_te(
                P.pack_windows,
                x,
                pad_value,
                padding=padding,
                kernel=weight.shape[2:],
                strides=strides,
                dilation=dilation,
                out_hw=out_shape[2:],
                width=P.padded_width(out_shape[3], rows),
                **packing,
            )
            weight, strides, dilation = P.window_weight(weight, intrin.k), (1, 1), (1, 1)
        else:
            # A multi-row instruction computes whole groups of `rows` pixels: pad the input
            # for them.
            extra = (P.padded_width(out_shape[3], rows) - out_shape[3]) * strides[1]
            padding = padding[:3] + (padding[3] + extra,)
            phases = strides[1] if rows > 1 else 1
            xp = bb.emit_te(P.pack_data, x, pad_value, padding=padding, phases=phases, **packing)
    else:
        xp = bb.emit_te(P.pack_rows, value.args[0], width=rows, **packing)
        strides, dilation = (1, 1), (1, 1)
    wp = relax.const(
        P.pack_weight(weight, intrin.lanes, intrin.k, intrin.weight_dtype, intrin.k_major)
    )
    kernel = dict(
        strides=strides, dilation=dilation, out_shape=out_shape, rows=rows, k_major=intrin.k_major
    )
    if plan.chain is None:
        corr = intrin.input_offset * plan.weight.astype(np.int64).sum(axis=(1, 2, 3))
        return bb.emit(
            bb.call_te(
                P.conv2d_int32,
                xp,
                wp,
                _const(corr, "int32"),
                **kernel,
                primfunc_name_hint=f"{plan.kind}_packed_int8",
            ),
            b.var.name,
        )
    args, lookup, suffix = _epilogue_args(plan, intrin.lanes)
    packed = bb.emit_te(
        P.conv2d_requant,
        xp,
        wp,
        *args,
        **kernel,
        **lookup,
        primfunc_name_hint=f"{plan.kind}_packed_int8_requant{suffix}",
    )
    if plan.kind == "transposed":
        return bb.emit(
            bb.call_te(
                P.unpack_phases,
                packed,
                out_shape=final_shape,
                strides=t.strides,
                padding=t.padding,
                first=t.first,
                rows=rows,
                primfunc_name_hint="unpack_phases",
            ),
            plan.out.name,
        )
    out = bb.emit(
        bb.call_te(P.unpack, packed, out_shape=out_shape, rows=rows, primfunc_name_hint="unpack"),
        plan.out.name,
    )
    if plan.kind == "conv2d" and rows == 1:
        blocked[out] = packed
    return out


@tvm.transform.module_pass(opt_level=0, name="PackInt8ForDot")
class PackInt8ForDot:
    """Rewrite int8 conv2d/dense of ``main`` into the packed kernels of ``intrin`` (module
    docstring). A module without such layers comes back unchanged."""

    def __init__(self, intrin: DotProduct):
        self.intrin = intrin

    def transform_module(self, mod, ctx):
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod
        main = mod["main"]
        if (
            not isinstance(main, relax.Function)
            or not isinstance(main.body, relax.SeqExpr)
            or any(not isinstance(b, relax.DataflowBlock) for b in main.body.blocks)
        ):
            return mod  # only the pure dataflow graphs our passes produce are rewritten
        plans, skipped = _plan(mod["main"], self.intrin)
        if not plans and not any(_standalone_lookup(b.value) for b in bindings_of(main)):
            return mod
        final = {p.out: None for p in plans.values() if p.chain is not None}
        padded, blocked, sources = {}, {}, {}

        def binding(bb, b, value):
            sources[b.var] = value
            if b.var in plans:
                plan = plans[b.var]
                new = _emit(bb, b, value, plan, self.intrin, padded, blocked, sources)
                if plan.chain is not None:
                    final[plan.out] = new
                    return b.var  # the accumulator is not used any more
                return new
            if b.var in final:
                return final[b.var]
            if b.var in skipped:
                if op_name(value) == "relax.nn.pad":
                    pad = _spatial_pad(b.var, {b.var: [None]}, {b.var: value})
                    padded[b.var] = pad
                return b.var  # absorbed into a packed kernel; never emitted
            if _standalone_lookup(value):
                return bb.emit(
                    bb.call_te(P.lookup, value.args[0], value.args[1], primfunc_name_hint="lookup"),
                    b.var.name,
                )
            return bb.emit(value, b.var.name)

        mod = rewrite_main(mod, binding)
        # A blocked depthwise kernel computes each output from a window of its input, like
        # any injective op: so marked, FuseOps fuses the blocking of its input into it and the
        # unpacking (and the next conv's packing) of its result after it. Left to
        # AnnotateTIROpPattern, one with a lookup table is opaque (a gather) and stays alone.
        # The same for a lookup kernel: its gather of a constant table is elementwise in the
        # index.
        for gv, func in list(mod.functions_items()):
            if isinstance(func, tvm.tirx.PrimFunc) and (
                gv.name_hint.startswith("lookup")
                or self.intrin.depthwise_blocked
                and gv.name_hint.startswith("depthwise")
            ):
                mod[gv] = func.with_attr("op_pattern", _INJECTIVE)
        return relax.transform.DeadCodeElimination()(mod)
