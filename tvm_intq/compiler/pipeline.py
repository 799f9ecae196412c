"""The ``intq`` pipeline of ``tvm.compile``: our int8 lowering by name.

Registered with ``relax.pipeline.register_pipeline`` when :mod:`tvm_intq.compiler` is imported
(any of tvm_intq's TVM functions imports it: ``tvm_intq.calibrate``, ``tvm_intq.prepare``, ...)::

    ranges = tvm_intq.calibrate(tvm_intq.prepare(mod), samples)
    ex = tvm.compile(mod, target, relax_pipeline=relax.get_pipeline("intq", ranges=ranges))

(``tir_pipeline="intq"`` as well builds the kernels as ``tvm-intq compile`` does, small scratch
buffers on the stack: :func:`tvm_intq.schedules.tir_pipeline` registers that name.)

    mod (float)  -> [CanonicalizeForQuantization] -> Annotate(ranges, scheme) -> FoldToInteger
                 -> [CheckIntegerOnly] -> build pipeline (legalize, fuse, VM lowering)
    mod (QDQ)    -> CanonicalizeQDQ -> FoldToInteger -> ...          (ranges=None)

``ranges`` are keyed by the tensor names of the canonical module they were calibrated on:
the pipeline takes that module as it is (every range names one of its tensors), or the float
module it was prepared from, which it canonicalizes first (deterministic: the same names).
Without ``ranges`` the module must already be quantized (QDQ: e.g. an imported pre-quantized
model) and keeps its own scales.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.relay_passes import (
    Annotate,
    CanonicalizeForQuantization,
    CanonicalizeQDQ,
    CheckIntegerOnly,
    FoldToInteger,
)
from tvm_intq.relay_passes.analysis.rebuild import bindings_of
from tvm_intq.schedules import build_pipeline, tir_pipeline

NAME = "intq"


@tvm.transform.module_pass(opt_level=0, name="Prepared")
class Prepared:
    """The module ``ranges`` were calibrated on: as it is if it has every tensor they name,
    else canonicalized (:func:`CanonicalizeForQuantization`)."""

    def __init__(self, ranges: dict):
        self.names = set(ranges)

    def transform_module(self, mod, ctx):
        func = mod["main"]
        names = {p.name for p in func.params} | {b.var.name for b in bindings_of(func)}
        return mod if self.names <= names else CanonicalizeForQuantization()(mod)


def intq_pipeline(
    ranges: dict | None = None, scheme: str = "hybrid-asym", integer_only: bool = False
) -> tvm.transform.Pass:
    """Float (or QDQ) Relax module -> integer program -> VM executable code (see module
    docstring). ``integer_only`` fails, naming them, when float ops are left."""
    if ranges is None:
        lower = [CanonicalizeQDQ(), FoldToInteger()]
    else:
        lower = [Prepared(ranges), Annotate(ranges, scheme), FoldToInteger()]
    check = [CheckIntegerOnly()] if integer_only else []
    return tvm.transform.Sequential(lower + check + [build_pipeline()], name=NAME)


if NAME not in relax.pipeline.PIPELINE_MAP:  # importing twice (or reloading) must not fail
    relax.pipeline.register_pipeline(NAME)(intq_pipeline)
tir_pipeline()  # the TIR pipeline of the same name
