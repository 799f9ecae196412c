"""Int8 dot-product instructions a kernel can be tensorized with.

A target definition (:class:`~tvm_intq.targets.TargetSpec`) lists the instructions it wants in
``int8_dot``, best first; :func:`select` returns the first one the compilation target's CPU
features support, and the packing pass (:mod:`.pack_int8`) lays int8 conv2d/dense out for it.
Adding an instruction = a TVMScript implementation + one :class:`DotProduct` line below; the
computation it replaces (``desc``) is derived from the :class:`DotProduct` shape.

We register our own tensor intrinsics instead of TVM's ``dot_16x4_vnni``,
``dot_4x4_i8i8s32_sdot`` and ``rvv_dot_*`` (TVM has none for i8mm ``smmla``):

* TVM 0.27's implementation calls ``llvm.x86.avx512.vpdpbusd.512`` with ``<16 x i32>``
  operands; since LLVM 21 the intrinsic takes ``<64 x i8>`` (the wheel links LLVM 22), so every
  kernel tensorized with it fails LLVM's verifier ("Call parameter type does not match function
  signature");
* using TVM's means importing ``tvm.s_tir.tensor_intrin``, which parses every intrinsic of every
  backend (CUDA alone: ~55 s on the busy 2-core machine), on every compile;
* TVM's ``rvv_dot_*`` (``vwmul`` + ``vwredsum`` per output lane, exact) are registered per
  target with VLEN baked into their shapes (``VLEN/32`` lanes): a kernel tensorized with them
  is wrong or unused on a core of another VLEN, and they reduce one output per instruction
  sequence. Ours (``_impl_rvv_vwmacc``) runs on any VLEN >= 128 and keeps 4 pixels x 16
  channels of accumulators in registers.

Only instructions that are exact on every int8 input belong here: x86 ``vpmaddubsw`` (TVM's
``dot_16x4_avx512``, and ONNX Runtime's AVX2 kernels) saturates the int16 sum of two u8 x s8
products (``2 * 255 * 127 > 32767``), so a kernel using it would not match the numpy
reference bit for bit. On an AVX2 CPU without VNNI we take the exact ``vpmaddwd`` instead:
int8 values widened to int16 (the weights at compile time, the activations when they are
packed), two products per int32 lane, as XNNPACK's AVX2 int8 kernels do.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DotProduct:
    """``C[r, i] += sum_k A[r, k] * B[i, k]`` for ``r < rows``, ``i < lanes``, ``k < k``, int32
    accumulators: ``rows`` activation vectors (output pixels) times ``lanes`` weight vectors
    (output channels) of ``k`` bytes each. With ``rows == 1`` (a dot product: VNNI, sdot)
    the buffers drop the row axis, ``C[i] += sum_k A[k] * B[i, k]``; ``rows > 1`` takes that
    many pixels at once: a matrix multiply (i8mm ``smmla``: 2x8 by 8x2), or RVV's 4 pixels that
    share each weight vector.

    ``data_dtype`` is what the activation operand must be: ``"uint8"`` means the int8 input is
    shifted by +128 and the shift is folded into the requantize (``intmath.shifted_input_requant``).
    ``weight_dtype`` is how the packed weights are stored (the values are int8 either way).
    """

    name: str  # what target definitions write in int8_dot
    tensor_intrin: str  # the TVM tensor intrinsic registered for it
    lanes: int
    k: int
    data_dtype: str
    weight_dtype: str
    llvm_features: tuple[str, ...]
    instruction: str  # the mnemonic `tvm-intq inspect` looks for
    rows: int = 1
    #: The weights are stored ``k, lanes`` (each input channel's ``lanes`` weights one
    #: vector), not ``lanes, k`` (each channel's ``k`` bytes one word, as VNNI/sdot take them).
    k_major: bool = False
    #: Most accumulator vectors (groups of ``rows`` pixels x blocks of ``lanes`` channels) the
    #: default schedule keeps at once (register blocking): they must fit the vector registers
    #: with the operands.
    max_tile: int = 8
    #: Most blocks of ``lanes`` output channels in one register tile: each activation word
    #: loaded then feeds that many instructions (``ld1r`` + 4 ``sdot`` on ARM).
    channel_blocks: int = 1
    #: TVM vectorizes loops for the instruction's targets with LLVM scalable vectors (RVV:
    #: ``vscale``-sized chunks): MetaSchedule's feature extractor cannot size them, so tuning
    #: cannot use the XGBoost cost model (schedules/tune/session.py).
    scalable: bool = False
    #: How a depthwise conv's weights are stored (:func:`.packed_kernels.depthwise_weight`):
    #: ARM and RVV widen int16 x int16 to int32 in one multiply-add (``smlal``,
    #: ``vwmacc.vv``); x86 multiplies on its two FMA units in float32, where every product and
    #: sum of 8-bit integers is exact (:func:`.packed_kernels.float32_exact`): one
    #: ``vfmadd231ps`` per 8 multiply-adds where ``vpmulld`` + ``vpaddd`` take two
    #: instructions on one port (PP-OCR cls's 5x5 depthwise kernels 110 -> 83 us).
    depthwise_dtype: str = "int16"
    #: A depthwise conv runs in the packed conv's blocked layout, a pixel's ``lanes`` channels
    #: one vector (:func:`.packed_kernels.depthwise_blocked`); False: in ``NCHW``, output
    #: columns as vectors (:func:`.packed_kernels.depthwise_requant`), where ``lanes`` is too
    #: few channels for a vector (i8mm's 2) or LLVM vectorizes the columns better (RVV's
    #: ``vwmacc.vx`` with a scalar weight per tap: the bundled model's 3x3, 63k instructions
    #: against 127k blocked).
    depthwise_blocked: bool = True

    def __post_init__(self):
        if self.depthwise_blocked and self.rows != 1:
            raise ValueError("a blocked depthwise conv reads a one-row instruction's layout")

    @property
    def input_offset(self) -> int:
        return 128 if self.data_dtype == "uint8" else 0


INTRINSICS: dict[str, DotProduct] = {
    d.name: d
    for d in (
        DotProduct(
            "x86-vnni",
            tensor_intrin="intq_dot_16x4_vnni",
            lanes=16,
            k=4,
            data_dtype="uint8",
            weight_dtype="int8",
            llvm_features=("avx512vnni",),
            instruction="vpdpbusd",
            depthwise_dtype="float32",
        ),
        # AVX2 without VNNI: vpmaddwd on int16 pairs (exact), 16 multiply-adds per
        # instruction where vpdpbusd does 64. The activation pair is one int32 broadcast.
        DotProduct(
            "x86-avx2",
            tensor_intrin="intq_dot_8x2_avx2",
            lanes=8,
            k=2,
            data_dtype="int16",
            weight_dtype="int16",
            llvm_features=("avx2",),
            instruction="vpmaddwd",
            depthwise_dtype="float32",
        ),
        # i8mm before dotprod: smmla does 32 multiply-adds where sdot does 16.
        DotProduct(
            "arm-i8mm",
            tensor_intrin="intq_mmla_2x2x8_smmla",
            rows=2,
            lanes=2,
            k=8,
            data_dtype="int8",
            weight_dtype="int8",
            llvm_features=("i8mm",),
            instruction="smmla",
            depthwise_blocked=False,
        ),
        DotProduct(
            "arm-sdot",
            tensor_intrin="intq_dot_4x4_sdot",
            lanes=4,
            k=4,
            data_dtype="int8",
            weight_dtype="int8",
            llvm_features=("dotprod",),
            instruction="sdot",
            # 32 NEON registers: 16 accumulators, 4 weight vectors, 4 activation words.
            max_tile=16,
            channel_blocks=4,
        ),
        # Per pixel and input channel one widening multiply-add over 16 output channels: the
        # weights are stored widened to int16 (vwmacc.vx at SEW 16); 4 pixels share each weight
        # vector, and their 4 accumulators (4 registers each at VLEN 128) fill 16 of the 32
        # vector registers, so one group of 4 per tile. k = 2: TVM cannot tensorize k = 1.
        DotProduct(
            "rvv-vwmacc",
            tensor_intrin="intq_vwmacc_4x16x2_rvv",
            rows=4,
            lanes=16,
            k=2,
            data_dtype="int8",
            weight_dtype="int16",
            llvm_features=("v",),
            instruction="vwmacc.vx",
            k_major=True,
            max_tile=1,
            scalable=True,
            depthwise_blocked=False,
        ),
    )
}


def _desc(d: DotProduct):
    """The computation an intrinsic replaces (the :class:`DotProduct` formula), as TVMScript."""
    from tvm.script import tirx as T

    rows, lanes, k = d.rows, d.lanes, d.k
    b_shape = (k, lanes) if d.k_major else (lanes, k)

    def weight(i, kk):  # B[i, k] of the formula, where the weights keep it
        return (kk, i) if d.k_major else (i, kk)

    if rows == 1:

        @T.prim_func(s_tir=True)
        def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (k,), d.data_dtype, offset_factor=1)
            B = T.match_buffer(b, b_shape, d.weight_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:k], B[0 : b_shape[0], 0 : b_shape[1]])
                T.writes(C[0:lanes])
                for i, kk in T.grid(lanes, k):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, kk])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[weight(vi, vk)], "int32")

        return desc

    # The rows are output pixels: their activations are not adjacent in memory (row stride).
    @T.prim_func(s_tir=True)
    def desc_rows(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (rows, k), d.data_dtype, offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, b_shape, d.weight_dtype, offset_factor=1)
        C = T.match_buffer(c, (rows, lanes), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:rows, 0:lanes], A[0:rows, 0:k], B[0 : b_shape[0], 0 : b_shape[1]])
            T.writes(C[0:rows, 0:lanes])
            for r, i, kk in T.grid(rows, lanes, k):
                with T.sblock("update"):
                    vr, vi, vk = T.axis.remap("SSR", [r, i, kk])
                    C[vr, vi] = C[vr, vi] + T.cast(A[vr, vk], "int32") * T.cast(
                        B[weight(vi, vk)], "int32"
                    )

    return desc_rows


def _impl_word_dot(llvm_intrinsic: str):
    """The implementation of a ``k = 4`` dot product whose instruction takes the 4-byte
    activation word broadcast to every int32 lane: x86 ``vpdpbusd`` (u8 x s8; LLVM >= 21 wants
    byte vectors) and ARM ``sdot`` (s8 x s8): lane ``i`` += the four products of bytes
    ``4i..4i+3``."""

    def impl_of(d: DotProduct):
        from tvm.script import tirx as T

        lanes, a_word_t, acc_t = d.lanes, f"{d.data_dtype}x4", f"int32x{d.lanes}"
        bytes_a, bytes_b = f"{d.data_dtype}x{4 * lanes}", f"{d.weight_dtype}x{4 * lanes}"

        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (4,), d.data_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, 4), d.weight_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                a_word = T.reinterpret(A.vload([0], a_word_t), dtype="int32")
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_intrinsic),
                    C.vload([0], dtype=acc_t),
                    T.reinterpret(T.broadcast(a_word, lanes), dtype=bytes_a),
                    B.vload([0, 0], dtype=bytes_b),
                    dtype=acc_t,
                )

        return impl

    return impl_of


def _impl_avx2_pmaddwd(d: DotProduct):
    """``C[i] += A[0] * B[i, 0] + A[1] * B[i, 1]`` over 8 int32 lanes: the int16 activation
    pair broadcast as one 32-bit word, ``vpmaddwd`` with the 8 channels' weight pairs, then an
    add (AVX2 has no accumulating form)."""
    from tvm.script import tirx as T

    lanes = d.lanes
    acc_t, pairs_t = f"int32x{lanes}", f"int16x{2 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2,), "int16", offset_factor=1)
        B = T.match_buffer(b, (lanes, 2), "int16", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:lanes, 0:2])
            T.writes(C[0:lanes])
            a_word = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=acc_t) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(a_word, lanes), dtype=pairs_t),
                B.vload([0, 0], dtype=pairs_t),
                dtype=acc_t,
            )

    return impl


def _impl_arm_i8mm(d: DotProduct):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (2, 8), "int8", offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, (2, 8), "int8", offset_factor=1)
        C = T.match_buffer(c, (2, 2), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:2, 0:2], A[0:2, 0:8], B[0:2, 0:8])
            T.writes(C[0:2, 0:2])
            # smmla: C (2x2, row-major) += A (2x8, row-major) x B^T (B: 2x8, row-major).
            C[0, T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla.v4i32.v16i8"),
                C.vload([0, 0], dtype="int32x4"),
                T.vectorcombine(
                    "int8x16", A.vload([0, 0], dtype="int8x8"), A.vload([1, 0], dtype="int8x8")
                ),
                B.vload([0, 0], dtype="int8x16"),
                dtype="int32x4",
            )

    return impl


def _impl_rvv_vwmacc(d: DotProduct):
    from tvm.script import tirx as T

    # Plain fixed-length vector TIR, not RVV intrinsics on scalable vectors: LLVM lowers
    # <16 x i32> to one LMUL-4 register group at VL 16 on any VLEN >= 128, forms vwmacc.vx from
    # the sign-extended multiply-add, and can keep the accumulators in registers across the
    # reduction loops around the intrinsic; an accumulator passed through llvm.riscv.vle/vse
    # went through memory (a vector load and store) on every call. The weights are k-major:
    # each input channel's 16 weights one plain load (interleaved, LLVM split them with a
    # segment load, vlseg2e16, which SiFive P670's model costs 44 cycles: 5x the block).
    rows, lanes = d.rows, d.lanes
    acc_t, w_t = f"int32x{lanes}", f"int16x{lanes}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (rows, 2), "int8", offset_factor=1, strides=[T.int32(), 1])
        B = T.match_buffer(b, (2, lanes), "int16", offset_factor=1)
        C = T.match_buffer(c, (rows, lanes), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:rows, 0:lanes], A[0:rows, 0:2], B[0:2, 0:lanes])
            T.writes(C[0:rows, 0:lanes])
            w0 = T.meta_var(T.Cast(acc_t, B.vload([0, 0], dtype=w_t)))
            w1 = T.meta_var(T.Cast(acc_t, B.vload([1, 0], dtype=w_t)))
            for r in T.unroll(rows):
                C[r, T.ramp(T.int32(0), 1, lanes)] = (
                    C.vload([r, 0], dtype=acc_t)
                    + T.Cast(acc_t, T.Broadcast(T.Cast("int16", A[r, 0]), lanes)) * w0
                    + T.Cast(acc_t, T.Broadcast(T.Cast("int16", A[r, 1]), lanes)) * w1
                )

    return impl


_IMPLS = {
    "x86-vnni": _impl_word_dot("llvm.x86.avx512.vpdpbusd.512"),
    "x86-avx2": _impl_avx2_pmaddwd,
    "arm-sdot": _impl_word_dot("llvm.aarch64.neon.sdot.v4i32.v16i8"),
    "arm-i8mm": _impl_arm_i8mm,
    "rvv-vwmacc": _impl_rvv_vwmacc,
}


_REGISTERED = False


def register() -> None:
    """Register the tensor intrinsics of :data:`INTRINSICS` with TVM (once per process)."""
    global _REGISTERED
    if not _REGISTERED:
        import tvm

        if tvm.target.codegen.llvm_version_major() < 21:
            raise RuntimeError(
                "tvm-intq's VNNI intrinsic passes byte vectors to vpdpbusd, as "
                "LLVM >= 21 wants; this TVM links an older LLVM"
            )
        from tvm.s_tir import TensorIntrin

        for d in INTRINSICS.values():
            TensorIntrin.register(d.tensor_intrin, _desc(d), _IMPLS[d.name](d), override=True)
        _REGISTERED = True


def supported(intrin: DotProduct, target) -> bool:
    """True when the LLVM ``target`` has every CPU feature the intrinsic needs."""
    return _has_features(target, intrin.llvm_features)


def _has_features(target, features) -> bool:
    """True when ``target`` is an LLVM target with every one of the CPU ``features``."""
    if target is None or target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    return all(bool(codegen.target_has_features(f, target)) for f in features)


def select(names, target) -> DotProduct | None:
    """The first of ``names`` (a target definition's ``int8_dot``) that ``target`` supports."""
    for name in names or ():
        intrin = INTRINSICS.get(name)
        if intrin is None:
            raise KeyError(
                f"unknown int8 dot-product instruction {name!r}; known: {', '.join(INTRINSICS)}"
            )
        if supported(intrin, target):
            register()
            return intrin
    return None


#: A lookup table gathered with byte permutes (:mod:`.table_lookup`): its entries (any index
#: into it is one byte) and the lanes the default schedule vectorizes (a pixel's channels in
#: the VNNI layout, 4 pixels' in ARM's).
LOOKUP_ENTRIES = 256
LOOKUP_LANES = 16
#: The CPU features of the permutes, by architecture: AVX-512 VBMI's ``vpermi2b``, NEON's
#: ``tbl``/``tbx``.
LOOKUP_FEATURES = {"x86": ("avx512vbmi", "avx512bw"), "aarch64": ("neon",)}


def table_permutes(target=None) -> str | None:
    """The architecture key of :data:`LOOKUP_FEATURES` whose features the LLVM ``target``
    (default: the current one) has, or None."""
    import tvm

    target = target or tvm.target.Target.current(allow_none=True)
    return next((a for a, f in LOOKUP_FEATURES.items() if _has_features(target, f)), None)
