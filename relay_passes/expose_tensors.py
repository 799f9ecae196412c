"""Return chosen intermediate tensors from ``main`` as extra outputs."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.errors import IntqError
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main


@tvm.transform.module_pass(opt_level=0, name="ExposeTensors")
class ExposeTensors:
    """``main`` returns ``(original output, t_1, ..., t_n)`` for the named tensors ``t_i``.

    What calibration runs to see every tensor it must quantize (ONNX Runtime's
    ``augment_graph``), and what per-layer error analysis runs on the integer program.
    Function parameters may be named too.
    """

    def __init__(self, names):
        self.names = list(names)

    def transform_module(self, mod, ctx):
        found = {}

        def start(bb, params):
            for old, new in params.items():
                if old.name in self.names:
                    found[old.name] = new

        def binding(bb, b, value):
            new = bb.emit(value, b.var.name)
            if b.var.name in self.names:
                found[b.var.name] = new
            return new

        def output(bb, out):
            missing = [n for n in self.names if n not in found]
            if missing:
                raise IntqError(f"no tensor named {', '.join(missing)} in the module")
            return relax.Tuple([out] + [found[n] for n in self.names])

        return rewrite_main(mod, binding, output, start)
