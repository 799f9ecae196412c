"""Int8 dot-product instructions a kernel can be tensorized with.

A target definition (:class:`~tvm_intq.targets.TargetSpec`) lists the instructions it wants in
``int8_dot``, best first; :func:`select` returns the first one the compilation target's CPU
features support, and the packing pass (:mod:`.pack_int8`) lays int8 conv2d/dense out for it.
Adding an instruction = a TVMScript implementation + one :class:`DotProduct` line below (the
ARM/RISC-V work plugs ``sdot``/``smmla``/RVV in here).

We register our own tensor intrinsics instead of using TVM's ``dot_16x4_vnni``:

* TVM 0.27's implementation calls ``llvm.x86.avx512.vpdpbusd.512`` with ``<16 x i32>``
  operands; since LLVM 21 the intrinsic takes ``<64 x i8>`` (the wheel links LLVM 22), so every
  kernel tensorized with it fails LLVM's verifier ("Call parameter type does not match function
  signature");
* using TVM's means importing ``tvm.s_tir.tensor_intrin``, which parses every intrinsic of every
  backend (CUDA alone: ~55 s on the busy 2-core machine), on every compile.

Only instructions that are exact on every int8 input belong here: x86 ``vpmaddubsw`` (TVM's
``dot_16x4_avx512``) saturates the int16 sum of two u8 x s8 products (``2 * 255 * 127 >
32767``), so a kernel using it would not match the numpy reference bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DotProduct:
    """``C[i] += sum_k A[k] * B[i, k]`` for ``i < lanes``, ``k < k``, int32 accumulators.

    ``data_dtype`` is what the activation operand must be: ``"uint8"`` means the int8 input is
    shifted by +128 and the shift is folded into the requantize (``intmath.shifted_input_requant``).
    """

    name: str  # what target definitions write in int8_dot
    tensor_intrin: str  # the TVM tensor intrinsic registered for it
    lanes: int
    k: int
    data_dtype: str
    weight_dtype: str
    llvm_features: tuple[str, ...]
    instruction: str  # the mnemonic `tvm-intq inspect` looks for

    @property
    def input_offset(self) -> int:
        return 128 if self.data_dtype == "uint8" else 0


INTRINSICS: dict[str, DotProduct] = {
    d.name: d
    for d in (
        DotProduct("x86-vnni", tensor_intrin="intq_dot_16x4_vnni", lanes=16, k=4,
                   data_dtype="uint8", weight_dtype="int8", llvm_features=("avx512vnni",),
                   instruction="vpdpbusd"),
    )
}


def _register_x86_vnni() -> None:
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a_word = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            # vpdpbusd: each int32 lane += four u8 x s8 products (LLVM >= 21: byte vectors).
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(a_word, 16), dtype="uint8x64"),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    TensorIntrin.register("intq_dot_16x4_vnni", desc, impl, override=True)


_REGISTERED = False


def register() -> None:
    """Register the tensor intrinsics of :data:`INTRINSICS` with TVM (once per process)."""
    global _REGISTERED
    if not _REGISTERED:
        import tvm

        if tvm.target.codegen.llvm_version_major() < 21:
            raise RuntimeError("tvm-intq's VNNI intrinsic passes byte vectors to vpdpbusd, as "
                               "LLVM >= 21 wants; this TVM links an older LLVM")
        _register_x86_vnni()
        _REGISTERED = True


def supported(intrin: DotProduct, target) -> bool:
    """True when the LLVM ``target`` has every CPU feature the intrinsic needs."""
    if target is None or target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    return all(bool(codegen.target_has_features(f, target)) for f in intrin.llvm_features)


def select(names, target) -> DotProduct | None:
    """The first of ``names`` (a target definition's ``int8_dot``) that ``target`` supports."""
    for name in names or ():
        intrin = INTRINSICS.get(name)
        if intrin is None:
            raise KeyError(f"unknown int8 dot-product instruction {name!r}; known: {', '.join(INTRINSICS)}")
        if supported(intrin, target):
            register()
            return intrin
    return None
