"""A kernel's scratch buffers on its stack frame instead of TVM's workspace pool.

Why kernels allocate per call: a scheduled kernel keeps some of its intermediates in buffers of
its own - a conv tile's int32 accumulators (``cache_write``), the int64 products of a fused
requantize epilogue that a tuning record materializes instead of inlining, a padded input
tile. TIR allocates them in ``global`` scope, and ``tirx.transform.LowerTVMBuiltin`` turns every
``global`` allocation of 1 KiB or more (``runtime::kMaxStackAlloca``) into a call of
``TVMBackendAllocWorkspace`` and ``TVMBackendFreeWorkspace`` around its use: a lookup in the
runtime's ``WorkspacePool`` (a list scanned for a free page of the right size, under the
device API's lock), on every call of the kernel, or on every task of a parallel loop when the
buffer lives inside it. Measured on the bundled model (aarch64, Neoverse-N1, instruction
counts): three such buffers (two 37 KB int64 epilogue products, one 12.5 KB accumulator
tile), ~1.4 k instructions per inference in the pool. Inside a parallel loop the buffer is
allocated once per task (before main's 1395ad3 made small kernels serial, the bundled model's
pool calls were 37 k instructions per inference, and thread-pool launches ~170 k more).

:func:`StackAllocations` annotates every constant-size ``global`` allocation of at most
:data:`MAX_STACK_BYTES` with ``disable_lower_builtin``: LowerTVMBuiltin then leaves it alone and
LLVM gives it a slot in the function's frame (an ``alloca``; 64-byte alignment as TVM's
workspace pages have). Nothing else changes: the same buffer, the same loads and stores, so
outputs stay bit-exact. Larger buffers keep the workspace pool: the stack of a thread-pool
worker is the C library's default (8 MB on glibc, less on musl and on some boards), and a
kernel's frame must leave room for the runtime's own frames below it.

Run it in the TIR pipeline after the buffers are flat and before LowerTVMBuiltin
(:func:`register_pipeline`: the ``"intq"`` TIR pipeline ``tvm.compile`` takes by name).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx

#: Largest buffer put on the stack, in bytes (module docstring).
MAX_STACK_BYTES = 64 * 1024
#: Storage scopes put on the stack. Not ``local``, though TVM's lowering sends every ``local``
#: buffer to the pool too (it keeps only small ``global`` ones on the stack): measured on the
#: bundled model (aarch64, Neoverse-N1), the packed conv kernels' ``int32[1]`` local
#: accumulators on the stack save 2.5 k instructions of pool calls per inference but LLVM then
#: compiles those kernels' loops into 5.8 k more instructions (+5.2 k llvm-mca cycles over
#: the whole call): a question for their schedule, not for this pass.
SCOPES = ("global",)
#: tirx::transform::kDisableLowerTVMBuiltin
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"
#: The TIR pipeline name :func:`register_pipeline` registers.
PIPELINE = "intq"


def _constant_bytes(buffer) -> int | None:
    n = buffer.dtype.bits * buffer.dtype.lanes // 8
    for extent in buffer.shape:
        if not isinstance(extent, tirx.IntImm):
            return None
        n *= int(extent)
    return n


def _on_stack(alloc, max_bytes: int):
    buffer = alloc.buffer
    size = _constant_bytes(buffer)
    if (
        buffer.scope() not in SCOPES
        or size is None
        or size > max_bytes
        or DISABLE_LOWER_BUILTIN in alloc.annotations
    ):
        return alloc
    return tirx.AllocBuffer(
        buffer,
        annotations={**alloc.annotations, DISABLE_LOWER_BUILTIN: tirx.IntImm("bool", 1)},
        span=alloc.span,
    )


def stack_allocations(func: tirx.PrimFunc, max_bytes: int = MAX_STACK_BYTES) -> tirx.PrimFunc:
    """``func`` with its constant-size buffers of :data:`SCOPES` of at most ``max_bytes``
    allocated on the stack (module docstring)."""
    body = tvm_ffi.structural_map(func.body, (tirx.AllocBuffer, lambda a: _on_stack(a, max_bytes)))
    return func if body.same_as(func.body) else func.with_body(body)


def StackAllocations(max_bytes: int = MAX_STACK_BYTES) -> tvm.transform.Pass:  # noqa: N802
    """The TIR pass of :func:`stack_allocations` over every host kernel of a module."""

    @tvm.transform.module_pass(opt_level=0, name="IntqStackAllocations")
    def run(mod, ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            target = func.attrs.get("target") if func.attrs else None
            if target is not None and target.kind.name != "llvm":
                continue  # device kernels: their memory is not the host's stack
            new = stack_allocations(func, max_bytes)
            if not new.same_as(func):
                updates[gv] = new
        if not updates:
            return mod
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return run


def register_pipeline(max_bytes: int = MAX_STACK_BYTES) -> str:
    """Register (once) the TIR pipeline :data:`PIPELINE`: TVM's default CPU one
    (``s_tir``) with :func:`StackAllocations` between its lowering and its host finalization
    (LowerTVMBuiltin); returns the name for ``tvm.compile(..., tir_pipeline=...)``."""
    from tvm.tirx import compilation_pipeline

    if PIPELINE in compilation_pipeline.PIPELINE_MAP:
        return PIPELINE

    def factory():
        from tvm_intq.schedules.table_lookup import TableLookupPermute

        lower, finalize_host, finalize_device = tvm.tirx.get_tir_pipeline("s_tir")
        seq = tvm.transform.Sequential(
            [lower, TableLookupPermute, StackAllocations(max_bytes)], name=PIPELINE
        )
        return seq, finalize_host, finalize_device

    compilation_pipeline.register_tir_pipeline(PIPELINE, factory)
    return PIPELINE
