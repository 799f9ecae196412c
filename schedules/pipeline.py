"""The Relax build pipeline tvm-intq compiles with.

    integer program
      -> PackInt8ForDot        int8 conv2d/dense in the target's dot-product layout (if it has one)
      -> legalize, fuse        (TVM's "zero" pipeline: one kernel per integer layer)
      -> apply the database    tuned kernels (MetaSchedule records), when a database is given
      -> FloatSchedule         only for the float programs calibration and evaluation run on
                               the host (.float_schedule): float convs accumulate in registers
      -> DefaultDotSchedule    packed kernels without a record: a fixed tensorized schedule;
                               every other kernel: the elementwise one
      -> serial small kernels  no thread-pool hand-off for a kernel too small to split (.parallel)
      -> VM lowering           (TVM's default build pipeline)

and, for the kernels, the TIR pipeline :func:`tir_pipeline` names: TVM's default CPU one with
the kernels' small scratch buffers on the stack instead of TVM's workspace pool
(:mod:`.stack_allocation`)::

    tvm.compile(mod, target, relax_pipeline=build_pipeline(...), tir_pipeline=tir_pipeline())

:func:`tuning_pipeline` is the part before the database: the kernels it leaves are the tuning
tasks, and the keys of the database records, so tuning and compiling see the same kernels.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.schedules.default_schedule import DefaultDotSchedule
from tvm_intq.schedules.float_schedule import FloatSchedule
from tvm_intq.schedules.intrinsics import INTRINSICS, DotProduct, select
from tvm_intq.schedules.pack_int8 import PackInt8ForDot
from tvm_intq.schedules.parallel import MIN_SPLIT_ITERATIONS, split_small_kernels
from tvm_intq.schedules.stack_allocation import register_pipeline

#: ``int8_dot`` of a caller that names no target definition: whatever the target supports.
ANY = None


def dot_product_for(int8_dot, target) -> DotProduct | None:
    """The intrinsic the packed layout is for: the first of ``int8_dot`` the ``target``
    supports (``ANY``: every known intrinsic, in the registry's order)."""
    return select(tuple(INTRINSICS) if int8_dot is ANY else int8_dot, target)


@tvm.transform.module_pass(opt_level=0, name="IntqDotLayout")
class _DotLayout:
    def __init__(self, int8_dot):
        self.int8_dot = int8_dot

    def transform_module(self, mod, ctx):
        intrin = dot_product_for(self.int8_dot, tvm.target.Target.current(allow_none=True))
        return mod if intrin is None else PackInt8ForDot(intrin)(mod)


@tvm.transform.module_pass(opt_level=0, name="IntqDefaultDotSchedule")
class _DefaultSchedule:
    def __init__(self, int8_dot):
        self.int8_dot = int8_dot

    def transform_module(self, mod, ctx):
        intrin = dot_product_for(self.int8_dot, tvm.target.Target.current(allow_none=True))
        return mod if intrin is None else DefaultDotSchedule(intrin)(mod)


@tvm.transform.module_pass(opt_level=0, name="IntqApplyDatabase")
class _ApplyDatabase:
    def __init__(self, database):
        self.database = database

    def transform_module(self, mod, ctx):
        with self.database:
            return relax.transform.MetaScheduleApplyDatabase()(mod)


def _fuse() -> tvm.transform.Pass:
    # TVM's "zero" pipeline without its implicit Database.current() lookup (applied explicitly).
    t = relax.transform
    return tvm.transform.Sequential(
        [t.LegalizeOps(), t.AnnotateTIROpPattern(), t.FoldConstant(), t.FuseOps(), t.FuseTIR()],
        name="intq_fuse",
    )


def tuning_pipeline(int8_dot=ANY) -> tvm.transform.Pass:
    """Integer program -> fused kernels (the tuning tasks). Runs under a target context."""
    return tvm.transform.Sequential([_DotLayout(int8_dot), _fuse()], name="intq_tasks")


def build_pipeline(
    int8_dot=ANY,
    database=None,
    min_split_iterations: int = MIN_SPLIT_ITERATIONS,
    float_schedule: bool = False,
) -> tvm.transform.Pass:
    """The whole build (module docstring). ``int8_dot``: the target definition's dot-product
    intrinsics (``TargetSpec.int8_dot``); ``database``: a MetaSchedule database of tuned
    kernels or None; ``min_split_iterations``: the work below which a kernel's parallel loops
    are made serial (:mod:`.parallel`; 0 keeps every parallel loop); ``float_schedule``: float
    reductions (convs, pools, matmuls) without a record get :mod:`.float_schedule`'s
    schedule (same values bit for bit, several times faster than TVM's plain loops)."""
    count, serial = split_small_kernels(min_split_iterations)
    passes = [tuning_pipeline(int8_dot), count]
    if database is not None:
        passes.append(_ApplyDatabase(database))
    if float_schedule:  # before the default schedules, which would take the float convs too
        passes.append(FloatSchedule())
    passes += [_DefaultSchedule(int8_dot), serial, relax.pipeline.default_build_pipeline()]
    return tvm.transform.Sequential(passes, name="intq_build")


def tir_pipeline() -> str:
    """The name of the TIR pipeline tvm-intq builds kernels with (registered on first use):
    ``tvm.compile(..., tir_pipeline=tir_pipeline())``."""
    return register_pipeline()
