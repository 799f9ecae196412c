"""Packed int8 kernels for a dot-product instruction (schedules/pack_int8, packed_kernels,
default_schedule): the rewrite's structure, and bit-exactness with the numpy reference of
the integer program for awkward shapes, extreme zero points, and the fallbacks."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_intq.core import intmath
from tvm_intq.evaluation.reference import run_reference
from tvm_intq.relay_passes.analysis.ir_utils import const_value, shape_of
from tvm_intq.relay_passes.ops import integer_kernels as K
from tvm_intq.schedules import build_pipeline
from tvm_intq.schedules.default_schedule import DefaultDotSchedule
from tvm_intq.schedules.intrinsics import INTRINSICS, select, supported
from tvm_intq.schedules.pack_int8 import PackInt8ForDot
from tvm_intq.targets import get_target

pytestmark = pytest.mark.integration  # whole models, boards or processes

VNNI = INTRINSICS["x86-vnni"]
HOST = get_target("host")
#: The x86 instruction this machine's int8 kernels use (VNNI where the CPU has it, else the
#: AVX2 one every x86-64 CPU of the last decade has): the kernels below run on it.
X86 = select(HOST.int8_dot, HOST.target())
#: Each x86 instruction compiled for a CPU that has it (and run where this machine can).
X86_CPUS = {"x86-vnni": "cascadelake", "x86-avx2": "haswell"}


def int8_layer(
    shape,
    out_channels,
    kernel=3,
    stride=1,
    pad=1,
    dilation=1,
    groups=1,
    zp_in=-5,
    dense=False,
    seed=0,
    relu=False,
    lookup=None,
    rescale=None,
    out_scale=0.1,
):
    """``main(x int8) -> int8``: one conv2d (or dense) layer as FoldToInteger writes it;
    ``lookup`` ("shared" or "per-channel"): then a random lookup table, as for a nonlinear
    layer after it; ``rescale`` ("tensor" or "channel"): then a requantize of the looked-up
    values (to the scale of a concat, say)."""
    rng = np.random.default_rng(seed)
    inp, out = intmath.QParams(0.05, zp_in), intmath.QParams(out_scale, 3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            if dense:
                qw = rng.integers(-127, 128, size=(shape[1], out_channels)).astype(np.int8)
                sw = rng.uniform(0.001, 0.02, out_channels)
                rq = intmath.conv_requant(
                    inp.scale, inp.zero_point, sw, qw, 1, None, out, acc_shape_axis=0, acc_ndim=1
                )
                y = K.matmul(bb, x, qw, rq, "y_q")
            else:
                qw = rng.integers(
                    -127, 128, size=(out_channels, shape[1] // groups, kernel, kernel)
                ).astype(np.int8)
                sw = rng.uniform(0.001, 0.02, out_channels)
                lo, hi = intmath.relu_bounds(out) if relu else (intmath.QMIN, intmath.QMAX)
                rq = intmath.conv_requant(
                    inp.scale, inp.zero_point, sw, qw, 0, rng.normal(size=out_channels), out, lo, hi
                )
                attrs = SimpleNamespace(
                    padding=[pad] * 4, strides=[stride] * 2, dilation=[dilation] * 2, groups=groups
                )
                y = K.conv2d(bb, x, inp, attrs, qw, rq, "y_q")
            if lookup is not None:
                table = rng.integers(
                    -128, 128, size=(256,) if lookup == "shared" else (256, out_channels)
                ).astype(np.int8)
                y = K.lookup(bb, y, table, None if lookup == "shared" else 1, "z_q")
            if rescale is not None:
                n = 1 if rescale == "tensor" else out_channels
                shape_c = (1, n) if dense else (1, n, 1, 1)
                rq = intmath.Requant(
                    rng.integers(2**29, 2**31, n).reshape(shape_c),
                    rng.integers(-(2**40), 2**40, n).reshape(shape_c),
                    np.full(shape_c, 33),
                    -100,
                    90,
                )
                y = K.requantize(bb, y, rq, "r_q")
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def conv_depthwise(
    shape, channels, stride=1, kernel=3, dilation=1, zp_in=-5, lookup=None, seed=0, first=True
):
    """``main(x int8) -> int8``: a 3x3 conv to ``channels`` (``first``; else ``x`` straight
    in), a depthwise conv (``kernel``, ``stride``, ``dilation``, padded to keep the size at
    stride 1) whose input zero point is ``zp_in``, a lookup table after it (``lookup`` as
    :func:`int8_layer`), then a 1x1 conv: a packed conv's result read by the depthwise kernel
    as it is, and the depthwise result packed for the next conv."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))

    def layer(y, inp, out, cin, cout, k, groups=1, stride=1, dilation=1, name="y"):
        qw = rng.integers(-127, 128, size=(cout, cin // groups, k, k)).astype(np.int8)
        rq = intmath.conv_requant(
            inp.scale,
            inp.zero_point,
            rng.uniform(0.001, 0.02, cout),
            qw,
            0,
            rng.normal(size=cout),
            out,
        )
        pad = dilation * (k - 1) // 2
        attrs = SimpleNamespace(
            padding=[pad] * 4, strides=[stride] * 2, dilation=[dilation] * 2, groups=groups
        )
        return K.conv2d(bb, y, inp, attrs, qw, rq, name)

    with bb.function("main", [x]):
        with bb.dataflow():
            y, cin = x, shape[1]
            dw_in = intmath.QParams(0.05, zp_in)
            if first:
                y = layer(y, intmath.QParams(0.05, -3), dw_in, cin, channels, 3, name="c1")
                cin = channels
            y = layer(y, dw_in, intmath.QParams(0.1, 7), cin, cin, kernel, cin, stride, dilation)
            if lookup is not None:
                table = rng.integers(
                    -128, 128, size=(256,) if lookup == "shared" else (256, cin)
                ).astype(np.int8)
                y = K.lookup(bb, y, table, None if lookup == "shared" else 1, "z_q")
            y = layer(y, intmath.QParams(0.1, 7), intmath.QParams(0.1, 0), cin, 5, 1, name="c2")
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def transposed_layer(
    shape,
    out_channels,
    kernel=2,
    stride=2,
    pad=0,
    output_padding=0,
    zp_in=-5,
    relu=False,
    lookup=None,
    seed=0,
):
    """``main(x int8) -> int8``: one transposed conv (``IOHW`` weights) as FoldToInteger
    writes it (input centred on its zero point, int32 ``conv2d_transpose``, requantize), with
    a lookup table after it as :func:`int8_layer`'s ``lookup``."""
    rng = np.random.default_rng(seed)
    inp, out = intmath.QParams(0.05, zp_in), intmath.QParams(0.1, 3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    qw = rng.integers(-127, 128, size=(shape[1], out_channels, kernel, kernel)).astype(np.int8)
    lo, hi = intmath.relu_bounds(out) if relu else (intmath.QMIN, intmath.QMAX)
    rq = intmath.conv_requant(
        inp.scale,
        0,
        rng.uniform(0.001, 0.02, out_channels),
        qw,
        1,
        rng.normal(size=out_channels),
        out,
        lo,
        hi,
    )
    attrs = SimpleNamespace(
        strides=[stride] * 2,
        padding=[pad] * 4,
        output_padding=[output_padding] * 2,
        dilation=[1, 1],
        groups=1,
    )
    with bb.function("main", [x]):
        with bb.dataflow():
            y = K.conv2d_transpose(bb, x, inp, attrs, qw, rq, "y_q")
            if lookup is not None:
                table = rng.integers(
                    -128, 128, size=(256,) if lookup == "shared" else (256, out_channels)
                ).astype(np.int8)
                y = K.lookup(bb, y, table, None if lookup == "shared" else 1, "z_q")
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def block_model(shape, seed=0):
    """``main(x int8) -> int8``: the kernels around the convs of a mobile block, each a kernel
    of its own kind: a conv, a residual add (its result not a conv's, so the lookup after it
    stays a ``take`` in the graph), a per-channel lookup, a squeeze-excite gate
    ``x * sigmoid(gate)`` as one two-input lookup, its gate broadcast from a global average
    pool and a dense layer, then a 2x2 average pool."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    p = intmath.QParams(0.05, -5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            qw = rng.integers(-127, 128, size=(c, c, 3, 3)).astype(np.int8)
            rq = intmath.conv_requant(
                p.scale, p.zero_point, rng.uniform(0.001, 0.02, c), qw, 0, None, p
            )
            attrs = SimpleNamespace(padding=[1] * 4, strides=[1, 1], dilation=[1, 1], groups=1)
            y = K.conv2d(bb, x, p, attrs, qw, rq, "conv")
            y = K.add(bb, y, x, intmath.add_requant(p, p, p), "res")
            table = rng.integers(-128, 128, size=(256, c)).astype(np.int8)
            y = K.lookup(bb, y, table, 1, "act")
            gap = K.mean(
                bb,
                y,
                [2, 3],
                True,
                intmath.rescale_requant(p.scale, p.zero_point, p, count=shape[2] * shape[3]),
                "gap",
            )
            qd = rng.integers(-127, 128, size=(c, c)).astype(np.int8)
            gate = K.matmul(
                bb,
                bb.emit(relax.op.reshape(gap, (shape[0], c))),
                qd,
                intmath.conv_requant(
                    p.scale,
                    p.zero_point,
                    rng.uniform(0.001, 0.02, c),
                    qd,
                    1,
                    None,
                    p,
                    acc_shape_axis=0,
                    acc_ndim=1,
                ),
                "fc",
            )
            gate = bb.emit(relax.op.reshape(gate, (shape[0], c, 1, 1)))
            table2 = rng.integers(-128, 128, size=(256, 256)).astype(np.int8)
            y = K.lookup2(bb, y, gate, table2, "se")
            pool = SimpleNamespace(
                pool_size=[2, 2], padding=[0] * 4, strides=[2, 2], dilation=[1, 1], layout="NCHW"
            )
            y = K.avg_pool(
                bb, y, p, pool, intmath.rescale_requant(p.scale, p.zero_point, p, count=4), "pool"
            )
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    return bb.get()


def ops(mod) -> list[str]:
    names = []
    for b in mod["main"].body.blocks[0].bindings:
        v = b.value
        if isinstance(v, relax.Call):
            call_tir = v.op.name == "relax.call_tir"
            names.append(v.args[0].name_hint if call_tir else v.op.name)
    return names


def inputs(shape, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    x.flat[:8] = [-128, 127, -128, 127, 0, -1, 1, -128]  # the extremes, where u8 = x + 128 bites
    return x


def compile_and_compare(mod, shape, target=None, seeds=(1, 2)):
    target = target or HOST.target()
    ex = tvm.compile(mod, target, relax_pipeline=build_pipeline(HOST.int8_dot))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for seed in seeds:
        x = inputs(shape, seed)
        np.testing.assert_array_equal(
            vm["main"](tvm.runtime.tensor(x)).numpy(), run_reference(mod, {"x": x})
        )
    return ex


def test_shifted_input_requant_is_the_same_integers():
    rng = np.random.default_rng(0)
    qw = rng.integers(-127, 128, size=(5, 7)).astype(np.int64)  # 5 channels, 7 inputs
    q = rng.integers(-128, 128, size=(100, 7)).astype(np.int64)
    rq = intmath.Requant(
        np.full(5, 1_500_000_000), rng.integers(-(2**40), 2**40, 5), np.full(5, 33)
    )
    acc = q @ qw.T
    shifted = intmath.shifted_input_requant(rq, qw.sum(1), np.abs(qw).sum(1))
    np.testing.assert_array_equal(shifted.apply((q + 128) @ qw.T), rq.apply(acc))


def test_shifted_input_requant_refuses_int64_overflow():
    rq = intmath.Requant(np.array([2**31 - 1]), np.array([2**61]), np.array([40]))
    with pytest.raises(ValueError, match="int64"):
        intmath.shifted_input_requant(rq, np.array([127 * 10**6]), np.array([127 * 10**6]))


def test_rewrite_replaces_conv_pad_and_requantize():
    mod = int8_layer((1, 8, 6, 6), 16)
    assert "relax.nn.conv2d" in ops(mod) and "relax.nn.pad" in ops(mod)
    packed = PackInt8ForDot(VNNI)(mod)
    assert ops(packed) == ["pack_int8", "conv2d_packed_int8_requant", "unpack"]
    names = [b.var.name for b in packed["main"].body.blocks[0].bindings]
    assert "y_q" in names  # the layer's tensor keeps its name (ExposeTensors, reports)


def test_rewrite_takes_the_lookup_table_into_the_kernel():
    for lookup in ("shared", "per-channel"):
        packed = PackInt8ForDot(VNNI)(int8_layer((1, 8, 6, 6), 16, lookup=lookup))
        assert ops(packed) == ["pack_int8", "conv2d_packed_int8_requant_lookup", "unpack"], lookup
        assert "z_q" in [b.var.name for b in packed["main"].body.blocks[0].bindings]
    # A requantize of the looked-up values folds into the table too.
    packed = PackInt8ForDot(VNNI)(int8_layer((1, 8, 6, 6), 16, lookup="shared", rescale="tensor"))
    assert ops(packed) == ["pack_int8", "conv2d_packed_int8_requant_lookup", "unpack"]


def test_rewrite_packs_kernel_windows_of_few_channel_inputs():
    """A 1-channel 3x3 conv reduces 3 groups of VNNI's 4 taps (one padded), not 9 groups
    holding 1 value each; 2 channels waste too little for that to pay."""
    for channels, shape in ((1, (3, 6, 6, 4)), (2, (1, 8, 8, 4))):
        packed = PackInt8ForDot(VNNI)(int8_layer((1, channels, 6, 6), 16))
        pack = packed["main"].body.blocks[0].bindings[0].var
        assert shape_of(pack)[1:] == shape, channels


def test_rewrite_gives_depthwise_convs_their_kernel_and_grouped_ones_a_kernel_per_group():
    """Pad, requantize and lookup inside the depthwise kernel, in the blocked layout of the
    packed convs (an input from elsewhere is blocked first), unpacked after it; where the
    instruction's lanes are too few channels for a vector (i8mm) it keeps ``NCHW``. A grouped
    conv, folded as a conv per group (``integer_kernels.conv2d``), is a packed kernel per
    group."""
    packed = PackInt8ForDot(VNNI)(int8_layer((1, 8, 6, 6), 8, groups=8, lookup="shared"))
    assert ops(packed) == ["pack_blocked", "depthwise_int8_requant_lookup", "unpack"]
    i8mm = PackInt8ForDot(INTRINSICS["arm-i8mm"])(int8_layer((1, 8, 6, 6), 8, groups=8))
    assert ops(i8mm) == ["depthwise_int8_requant"]
    grouped = ops(PackInt8ForDot(VNNI)(int8_layer((1, 8, 6, 6), 8, groups=2)))
    assert grouped == 2 * [
        "relax.strided_slice",
        "pack_int8",
        "conv2d_packed_int8_requant",
        "unpack",
    ] + ["relax.concat"]


@pytest.mark.parametrize(
    "case",
    [
        dict(shape=(1, 8, 6, 6), out_channels=16),
        dict(shape=(1, 3, 9, 7), out_channels=24, kernel=3, stride=2, pad=1, zp_in=-128),
        dict(shape=(2, 5, 8, 8), out_channels=7, kernel=1, pad=0, zp_in=127),
        dict(shape=(1, 17, 10, 10), out_channels=33, kernel=3, dilation=2, pad=2, relu=True),
        dict(shape=(3, 37), out_channels=10, dense=True),
        dict(shape=(1, 1, 13, 11), out_channels=24, stride=2, zp_in=-128, lookup="shared"),
        dict(
            shape=(2, 1, 9, 9), out_channels=17, dilation=2, pad=2, zp_in=127, lookup="per-channel"
        ),
        dict(shape=(3, 37), out_channels=10, dense=True, lookup="per-channel"),
        dict(shape=(1, 8, 6, 6), out_channels=20, lookup="shared", rescale="tensor"),
        dict(shape=(1, 8, 6, 6), out_channels=20, lookup="shared", rescale="channel"),
        dict(shape=(3, 37), out_channels=10, dense=True, lookup="per-channel", rescale="channel"),
    ],
    ids=[
        "basic",
        "odd-channels-stride2",
        "batch2-1x1",
        "dilated-relu",
        "dense",
        "windows-stride2-lookup",
        "windows-dilated-per-channel-lookup",
        "dense-lookup",
        "lookup-rescaled",
        "lookup-rescaled-per-channel",
        "dense-lookup-rescaled",
    ],
)
def test_packed_kernels_match_reference_bit_for_bit(case):
    mod = int8_layer(**case)
    ex = compile_and_compare(mod, case["shape"])
    asm = ex.mod.imports[0].inspect_source("asm")
    assert X86.instruction in asm


def test_requantize_keeps_the_high_word_only_when_every_shift_allows_it():
    """Every S >= 32 (multipliers below 1/2): the kernel shifts and clips the product's high
    word in int32, its constants other than ADD int32; a channel with S < 32 (an output scale
    finer than input x weight scale) keeps the int64 form. Bit-exact both ways."""
    for out_scale, high_word in ((0.1, True), (0.001, False)):
        mod = int8_layer((1, 8, 6, 6), 16, out_scale=out_scale, lookup="shared")
        call = next(
            b.value
            for b in PackInt8ForDot(VNNI)(mod)["main"].body.blocks[0].bindings
            if isinstance(b.value, relax.Call)
            and b.value.op.name == "relax.call_tir"
            and b.value.args[0].name_hint.startswith("conv2d")
        )
        constants = [const_value(a) for a in call.args[1].fields]
        int64 = [c for c in constants if c is not None and c.dtype == np.int64]
        assert len(int64) == (1 if high_word else 4), out_scale  # ADD alone, or ADD, S, lo, hi
        compile_and_compare(mod, (1, 8, 6, 6))


@pytest.mark.parametrize("name", sorted(X86_CPUS))
def test_each_x86_instruction_is_what_its_cpu_compiles(name):
    """VNNI's vpdpbusd for a CPU with AVX512-VNNI, AVX2's vpmaddwd for one without: each
    compiled for such a CPU, and run against the reference where this machine can run it."""
    target = tvm.target.Target({"kind": "llvm", "mcpu": X86_CPUS[name]})
    assert select(HOST.int8_dot, target).name == name
    mod = int8_layer((1, 8, 6, 6), 16, lookup="shared")
    ex = tvm.compile(mod, target, relax_pipeline=build_pipeline(HOST.int8_dot))
    asm = ex.mod.imports[0].inspect_source("asm")
    assert INTRINSICS[name].instruction in asm
    if supported(INTRINSICS[name], HOST.target()):
        compile_and_compare(mod, (1, 8, 6, 6), target=target)


@pytest.mark.parametrize(
    "case",
    [
        dict(shape=(1, 8, 6, 6), out_channels=8, groups=8),
        dict(shape=(2, 5, 9, 7), out_channels=5, groups=5, stride=2, zp_in=-128, relu=True),
        dict(shape=(1, 3, 20, 37), out_channels=3, groups=3, dilation=2, pad=2, lookup="shared"),
        dict(
            shape=(1, 6, 5, 5),
            out_channels=6,
            groups=6,
            kernel=1,
            pad=0,
            zp_in=127,
            lookup="per-channel",
        ),
    ],
    ids=["basic", "batch2-stride2-relu", "dilated-wide-lookup", "1x1-per-channel-lookup"],
)
def test_depthwise_kernel_matches_reference_bit_for_bit(case, caplog):
    """Any target with a packed layout gets the depthwise kernel (output columns as vectors,
    split past 16: the wide case), exact at the padded borders and with its lookup."""
    mod = int8_layer(**case)
    packed = PackInt8ForDot(VNNI)(mod)
    assert [o for o in ops(packed) if o.startswith("depthwise")], ops(packed)
    compile_and_compare(mod, case["shape"])
    assert "schedule failed" not in caplog.text  # the default schedule, not the fallback


@pytest.mark.parametrize(
    "case",
    [
        dict(shape=(1, 3, 9, 11), channels=20, lookup="shared"),
        dict(shape=(2, 5, 10, 7), channels=8, stride=2, zp_in=-128, lookup="per-channel"),
        dict(shape=(1, 4, 9, 9), channels=13, kernel=5, dilation=2, zp_in=127),
        dict(shape=(1, 11, 7, 6), channels=11, stride=2, kernel=5, first=False, lookup="shared"),
    ],
    ids=["lookup", "batch2-stride2-per-channel", "5x5-dilated", "nchw-input-stride2-5x5"],
)
def test_depthwise_reads_the_packed_conv_result_bit_for_bit(case, caplog):
    """conv -> depthwise -> (lookup) -> conv: the depthwise kernel reads the packed conv's
    blocked result with no unpack in between (or blocks an NCHW input itself), its padding
    holds the zero point, its channels past the last block's are never stored; the same
    integers as the reference."""
    mod = conv_depthwise(**case)
    packed = PackInt8ForDot(X86)(mod)
    names = ops(packed)
    dw = next(i for i, o in enumerate(names) if o.startswith("depthwise"))
    assert names[dw - 1] == (
        "conv2d_packed_int8_requant" if case.get("first", True) else "pack_blocked"
    )
    assert names[dw + 1].startswith("unpack")
    compile_and_compare(mod, case["shape"])
    assert "schedule failed" not in caplog.text


@pytest.mark.parametrize(
    "case",
    [
        dict(shape=(1, 24, 5, 6), out_channels=24, relu=True),  # PP-OCR det's DB head
        dict(shape=(1, 24, 7, 5), out_channels=1, zp_in=-128, lookup="shared"),
        dict(shape=(2, 5, 4, 5), out_channels=7, kernel=3, pad=1, output_padding=1, zp_in=127),
        dict(shape=(1, 3, 5, 4), out_channels=9, kernel=4, stride=2, pad=1, lookup="per-channel"),
        dict(shape=(1, 6, 4, 4), out_channels=5, kernel=3, stride=3, pad=2),
        dict(shape=(1, 4, 6, 5), out_channels=3, kernel=3, stride=1, pad=1),
    ],
    ids=["2x2s2-relu", "to-1-channel-lookup", "3x3s2-outpad", "4x4s2", "3x3s3-pad2", "3x3s1"],
)
def test_transposed_conv_is_a_packed_conv_bit_for_bit(case, caplog):
    """A transposed conv becomes one packed, tensorized stride-1 conv over its input (its
    output phases stacked as channels, the input padded with its zero point) and a depth to
    space; exact wherever an output sums fewer taps than another (borders, output padding)."""
    mod = transposed_layer(**case)
    packed = PackInt8ForDot(X86)(mod)
    assert "relax.nn.conv2d_transpose" not in ops(packed)
    assert [o for o in ops(packed) if o.startswith("transposed_packed_int8_requant")]
    ex = compile_and_compare(mod, case["shape"])
    assert X86.instruction in ex.mod.imports[0].inspect_source("asm")
    assert "schedule failed" not in caplog.text


@pytest.mark.parametrize("shape", [(1, 8, 6, 6), (2, 13, 10, 7)], ids=["blocks", "odd"])
def test_kernels_without_a_conv_are_scheduled_and_exact(shape, caplog):
    """Every kernel without a conv gets the fixed elementwise schedule (its stages inlined
    into one loop nest, a broadcast operand computed once), lookup tables left in the graph
    fuse with the index computation before them and the packing after them (no standalone
    ``take`` kernel, no int32 index tensor between kernels); the same integers."""
    mod = block_model(shape)
    packed = PackInt8ForDot(X86)(mod)
    assert "relax.take" not in ops(packed)
    assert len([o for o in ops(packed) if o.startswith("lookup")]) == 2
    with HOST.target():
        fused = relax.get_pipeline("zero")(packed)
        scheduled = DefaultDotSchedule(X86)(fused)
    kernels = {
        gv.name_hint: f for gv, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
    }
    assert not [k for k in kernels if k.startswith("take") or k.startswith("lookup")]
    assert all(f.attrs.get("tirx.is_scheduled", False) for f in kernels.values()), [
        k for k, f in kernels.items() if not f.attrs.get("tirx.is_scheduled", False)
    ]
    compile_and_compare(mod, shape)
    assert "schedule failed" not in caplog.text


def test_a_padded_packing_runs_its_interior_without_conditions_and_is_exact():
    """The packing of a conv's padded input (6 columns, one of padding each side) loops over
    its border columns and its interior apart: conditions (which keep LLVM from vectorizing a
    load) remain only at the borders. The same integers."""
    mod = int8_layer((1, 8, 6, 6), 16)
    with HOST.target():
        scheduled = DefaultDotSchedule(X86)(relax.get_pipeline("zero")(PackInt8ForDot(X86)(mod)))
    (kernel,) = [f for gv, f in scheduled.functions_items() if gv.name_hint == "pack_int8"]
    sch = tvm.s_tir.Schedule(kernel)
    columns = []
    for name in ("pack_int8_xx0", "pack_int8_xx1", "pack_int8_xx2"):
        xx = sch.get(sch.get_loops(sch.get_sblock(name))[-2])
        columns.append((int(xx.min), int(xx.extent)))
    assert columns == [(0, 1), (1, 6), (7, 1)]
    compile_and_compare(mod, (1, 8, 6, 6))


def test_a_kernel_of_a_scalar_is_scheduled():
    """A 0-d tensor's kernel (the searches' gates) has a block and no loop."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((), "float32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.multiply(x, relax.const(3.0, "float32"))))
    with HOST.target():
        scheduled = DefaultDotSchedule(X86)(relax.get_pipeline("zero")(bb.get()))
    (kernel,) = [f for gv, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernel.attrs["tirx.is_scheduled"]


def test_a_sum_over_whole_axes_accumulates_in_a_register_and_is_exact():
    """A global average pool's sum keeps each channel's sum in a local buffer written back
    once, its 12x12 reduced values one loop (what LLVM vectorizes); the same integers."""
    shape, p = (1, 16, 12, 12), intmath.QParams(0.05, -5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            rq = intmath.rescale_requant(p.scale, p.zero_point, p, count=144)
            gv = bb.emit_output(K.mean(bb, x, [2, 3], True, rq, "gap"))
        bb.emit_func_output(gv)
    mod = bb.get()
    with HOST.target():
        scheduled = DefaultDotSchedule(X86)(relax.get_pipeline("zero")(PackInt8ForDot(X86)(mod)))
    (kernel,) = [f for gv, f in scheduled.functions_items() if "sum" in gv.name_hint]
    sch = tvm.s_tir.Schedule(kernel)
    (total,) = [
        b
        for b in sch.get_child_blocks(sch.get_sblock("root"))
        if any(iv.iter_type != tvm.tirx.IterVar.DataPar for iv in sch.get(b).iter_vars)
    ]
    region = sch.get(total).writes[0]
    loops = [(int(sch.get(lp).extent), int(sch.get(lp).kind)) for lp in sch.get_loops(total)]
    assert region.source.scope() == "local"
    kind = tvm.tirx.ForKind
    assert loops == [(16, kind.PARALLEL), (144, kind.SERIAL)], loops
    compile_and_compare(mod, shape)


def test_a_float_conv_keeps_its_reduction_loops():
    """A conv's reduction (two tensors read) is not a sum over whole axes: fused, its 8x3x3
    loop made TVM's fp32 build of the bundled model 2.3x slower."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 10, 10), "float32"))
    w = relax.const(np.ones((16, 8, 3, 3), np.float32))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit(relax.op.nn.conv2d(x, w, padding=[1, 1, 1, 1])))
    with HOST.target():
        scheduled = DefaultDotSchedule(X86)(relax.get_pipeline("zero")(bb.get()))
    (kernel,) = [f for gv, f in scheduled.functions_items() if "conv2d" in gv.name_hint]
    sch = tvm.s_tir.Schedule(kernel)
    (conv,) = [
        b
        for b in sch.get_child_blocks(sch.get_sblock("root"))
        if any(iv.iter_type != tvm.tirx.IterVar.DataPar for iv in sch.get(b).iter_vars)
    ]
    assert [int(sch.get(lp).extent) for lp in sch.get_loops(conv)][-3:] == [8, 3, 3]
    assert sch.get(conv).writes[0].source.scope() == "global"


def test_target_without_an_int8_instruction_is_untouched_and_exact():
    mod = int8_layer((1, 8, 6, 6), 16)
    sse4 = tvm.target.Target({"kind": "llvm", "mcpu": "nehalem"})  # no AVX2, no VNNI
    assert select(HOST.int8_dot, sse4) is None
    ex = compile_and_compare(mod, (1, 8, 6, 6), target=sse4)
    asm = ex.mod.imports[0].inspect_source("asm")
    assert "vpdpbusd" not in asm and "vpmaddwd" not in asm


def test_default_schedule_failure_falls_back_untensorized(caplog):
    """A packed kernel the fixed schedule cannot handle is compiled as it is, and warned about."""
    mod = int8_layer((1, 8, 6, 6), 16)
    broken = dataclasses.replace(X86, lanes=2 * X86.lanes)  # the packed kernel's lanes: no fit
    with HOST.target():
        fused = relax.get_pipeline("zero")(PackInt8ForDot(X86)(mod))
        scheduled = DefaultDotSchedule(broken)(fused)
    assert "default" in caplog.text and "untensorized" in caplog.text
    ex = tvm.compile(
        scheduled, HOST.target(), relax_pipeline=relax.pipeline.default_build_pipeline()
    )
    x = inputs((1, 8, 6, 6))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(out, run_reference(mod, {"x": x}))


def test_injective_candidates_are_exact_and_read_blocks_in_order():
    """Tuning measures these beside a kernel's plain loops (schedules/tune/first_candidates.py):
    everything inlined; for whole blocks of channels the blocked loop order, whose innermost
    loop runs over the ``lanes`` channels of a block (contiguous in the packed conv's result
    that ``unpack`` reads); the two innermost loops swapped (a packing's ``k`` bytes outside
    its columns). Same integers as the unscheduled kernel."""
    from tvm.s_tir import meta_schedule as ms

    from tvm_intq.schedules.database import extract_tasks
    from tvm_intq.schedules.default_schedule import injective_candidates
    from tvm_intq.schedules.tune.workers import candidate_input

    tasks = extract_tasks(int8_layer((1, 8, 6, 6), 32), HOST.target(), HOST.int8_dot)
    unpack = next(t for t in tasks if t.name == "unpack")
    pack = next(t for t in tasks if t.name == "pack_int8")  # 1, 8/k, 8, 8, k: k innermost

    def extents(sch):
        return [
            int(sch.get(lp).extent)
            for lp in sch.get_loops(sch.get_child_blocks(sch.get_sblock("root"))[0])
        ]

    unpacks = injective_candidates(unpack.mod, X86.lanes)  # inlined, blocked, swapped
    assert extents(unpacks[1]) == [1, 32 // X86.lanes, 6, 6, X86.lanes]
    packs = injective_candidates(pack.mod, X86.lanes)  # inlined, swapped
    blocks = 8 // X86.k
    assert [extents(c) for c in packs] == [[1, blocks, 8, 8, X86.k], [1, blocks, 8, X86.k, 8]]
    for task, candidates in ((unpack, unpacks), (pack, packs)):
        rng = np.random.default_rng(0)
        args = [
            candidate_input(shape, dtype, rng)
            for _, dtype, shape in (
                a.as_json() for a in ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])
            )
        ]
        outs = []
        for mod in (task.mod,) + tuple(c.mod for c in candidates):
            tensors = [tvm.runtime.tensor(a) for a in args]
            tvm.compile(mod, HOST.target())["main"](*tensors)
            outs.append(tensors[-1].numpy())
        for out in outs[1:]:
            np.testing.assert_array_equal(out, outs[0])
    # A kernel with a reduction (a float conv) has none: MetaSchedule tiles those.
    conv = next(t for t in tasks if t.name.startswith("conv2d_packed"))
    assert injective_candidates(conv.mod, X86.lanes) == []


def test_float32_depthwise_sums_are_exact_up_to_the_bound():
    """x86's depthwise multiply-adds run in float32 (:func:`.packed_kernels.float32_exact`):
    exact while every partial sum of 8-bit x int8 products stays below 2**24. At the widest
    kernel that allows (511 taps, sums reaching 16.7 M) the kernel's accumulator equals the
    integer one; one tap more is refused and the weights stay int32."""
    from tvm import te

    from tvm_intq.schedules import packed_kernels as P

    taps, lanes = 511, 8
    assert P.float32_exact(taps) and not P.float32_exact(taps + 1)
    rng = np.random.default_rng(0)
    # Near the extreme (uint8 activations, as VNNI's): every product about 255 * 127, so the
    # running sums pass 2**23, where float32 has no bit to spare; a few other taps keep the
    # low bits busy.
    w = np.where(rng.random((lanes, 1, taps)) < 0.95, 127, rng.integers(-127, 128)).astype(np.int8)
    x = np.full((1, 1, 1, taps, lanes), 255, np.uint8)
    x[..., :7, :] = rng.integers(0, 256, (7, lanes))
    acc = np.einsum("t l, l t -> l", x[0, 0, 0].astype(np.int64), w[:, 0].astype(np.int64))
    assert np.abs(acc).max() > 2**23
    wf = P.depthwise_weight(w, lanes, "float32")
    assert wf.dtype == np.float32
    assert (
        P.depthwise_weight(np.zeros((8, 1, taps + 1), np.int8), lanes, "float32").dtype == np.int32
    )
    # Requantized by add = -acc, shift 0: every output 0 where the sum was exact.
    xb = te.placeholder(x.shape, "uint8", "xb")
    zp = te.placeholder((), "uint8", "zp")
    wt = te.placeholder(wf.shape, "float32", "w")
    vecs = {n: te.placeholder((lanes,), "int64", n) for n in ("mul", "add", "shift", "lo", "hi")}
    out = P.depthwise_blocked(
        xb,
        zp,
        wt,
        *vecs.values(),
        in_hw=(1, taps),
        padding=(0, 0, 0, 0),
        strides=(1, 1),
        dilation=(1, 1),
        out_hw=(1, 1),
    )
    func = te.create_prim_func([xb, zp, wt, *vecs.values(), out])
    f = tvm.compile(tvm.IRModule({"main": func}), HOST.target())
    args = [
        x,
        np.int8(0),
        wf,
        np.ones(lanes),
        -acc,
        np.zeros(lanes),
        np.full(lanes, -128),
        np.full(lanes, 127),
    ]
    dtypes = ["uint8", "uint8", "float32"] + ["int64"] * 5
    result = tvm.runtime.tensor(np.ones((1, 1, 1, 1, lanes), np.int8))
    f["main"](*[tvm.runtime.tensor(np.asarray(a, d)) for a, d in zip(args, dtypes)], result)
    np.testing.assert_array_equal(result.numpy(), 0)
    with pytest.raises(ValueError, match="not exact in float32"):
        P.depthwise_blocked(
            te.placeholder((1, 1, 1, taps + 1, lanes), "int8"),
            zp,
            te.placeholder((1, 1, taps + 1, lanes), "float32"),
            *vecs.values(),
            in_hw=(1, taps + 1),
            padding=(0, 0, 0, 0),
            strides=(1, 1),
            dilation=(1, 1),
            out_hw=(1, 1),
        )
