"""The design space MetaSchedule searches for a target with an int8 dot-product instruction.

TVM's default x86 space already holds a ``MultiLevelTilingWithIntrin`` rule, but for TVM's own
``dot_16x4_vnni`` (which does not compile with the wheel's LLVM, see :mod:`.intrinsics`). This
is the same rule list with our intrinsic in that slot: the packed conv's block is tiled so its
innermost ``lanes x k`` loops map onto the instruction, and RewriteTensorize replaces them;
blocks the intrinsic does not fit (the epilogue, depthwise convs, float ops) fall through to
plain multi-level tiling. The ARM (``sdot``, i8mm ``smmla``) and RISC-V (``vwmacc``)
intrinsics sit in the same slot for their targets.
"""

from __future__ import annotations

from tvm.s_tir import meta_schedule as ms

from tvm_intq.schedules.intrinsics import DotProduct

_REUSE = ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")


def schedule_rules(intrin: DotProduct) -> list:
    R = ms.schedule_rule
    return [
        R.ApplyCustomRule(),
        R.InlineConstantScalars(),
        R.AutoInline(
            into_producer=False,
            into_consumer=True,
            inline_const_tensor=True,
            disallow_if_then_else=True,
            require_injective=True,
            require_ordered=True,
            disallow_op=["tirx.exp"],
        ),
        R.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        R.MultiLevelTilingWithIntrin(
            intrin.tensor_intrin, structure="SSRSRS", max_innermost_factor=64, reuse_write=_REUSE
        ),
        R.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64, reuse_write=_REUSE),
        R.ParallelizeVectorizeUnroll(
            max_jobs_per_core=16,
            max_vectorize_extent=64,
            unroll_max_steps=[0, 16, 64, 512],
            unroll_explicit=True,
        ),
        R.RandomComputeLocation(),
    ]


def postprocs(intrin: DotProduct) -> list:
    P = ms.postproc
    # RewriteTensorize can vectorize an init of one loop only: a multi-row intrinsic's init is
    # rows x lanes (TVM checks init_loops.size() == 1 and aborts the search).
    return [
        P.DisallowDynamicLoop(),
        P.RewriteParallelVectorizeUnroll(),
        P.RewriteReductionBlock(),
        P.RewriteTensorize(vectorize_init_loop=intrin.rows == 1),
        P.RewriteLayout(),
    ]


def design_space(intrin: DotProduct | None):
    """The space generator for tasks compiled for ``intrin`` (None: TVM's default for the
    target)."""
    if intrin is None:
        return ms.space_generator.PostOrderApply()  # TVM's default rules for the target
    return ms.space_generator.PostOrderApply(
        sch_rules=schedule_rules(intrin), postprocs=postprocs(intrin), mutator_probs="llvm"
    )
