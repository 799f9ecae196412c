"""The Relax build pipeline tvm-intq compiles with."""

from __future__ import annotations

import tvm
from tvm import relax


def build_pipeline() -> tvm.transform.Pass:
    """Legalize, fuse, then lower for the VM.

    TVM's default CPU pipeline legalizes without fusing, and ``"zero"`` fuses without the VM
    lowering; together each integer layer (int8 conv + int64 requantize + clip + cast) becomes
    one kernel.
    """
    return tvm.transform.Sequential(
        [relax.get_pipeline("zero"), relax.pipeline.default_build_pipeline()],
        name="intq_build")
