"""Give every tensor of ``main`` a unique, readable name."""

from __future__ import annotations

import tvm

from tvm_intq.relay_passes.analysis.ir_utils import op_name
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


@tvm.transform.module_pass(opt_level=0, name="NameTensors")
class NameTensors:
    """Rename the bindings of ``main`` to ``<op>_<n>`` (``conv2d_0``, ``sigmoid_3``, ...).

    The frontend's ``lv12`` names are not unique within a function; calibration ranges,
    reports and error messages key tensors by name, so the names must be unique and should
    say what produced the tensor.
    """

    def transform_module(self, mod, ctx):
        counts: dict = {}

        def emit(bb, binding, value):
            kind = (op_name(value) or type(value).__name__).split(".")[-1].lower()
            n = counts.get(kind, 0)
            counts[kind] = n + 1
            return bb.emit(value, f"{kind}_{n}")

        return rewrite_main(mod, emit)
