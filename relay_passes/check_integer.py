"""Find the float arithmetic left inside the integer region of a folded module."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.errors import IntqError
from tvm_intq.relay_passes.analysis.ir_utils import is_float, op_name, returned_vars
from tvm_intq.relay_passes.analysis.rebuild import bindings_of

# Float values may enter only through the input quantize and leave through the output
# dequantize; everything else between them should be integer.
_BOUNDARY = {"relax.quantize", "relax.dequantize"}


def float_ops(mod: tvm.IRModule) -> list[str]:
    """``"<tensor> = <op>"`` for every float computation of ``main`` other than the
    quantize of a graph input and the dequantize of a graph output."""
    func = mod["main"]
    outputs = returned_vars(func.body.body)
    params = set(func.params)
    left = []
    for b in bindings_of(func):
        value = b.value
        name = op_name(value) or type(value).__name__
        if name == "relax.quantize" and value.args[0] in params:
            continue
        if name == "relax.dequantize" and b.var in outputs:
            continue
        touches_float = is_float(b.var) or any(
            isinstance(a, relax.Var) and is_float(a) for a in getattr(value, "args", [])
        )
        if touches_float and name not in ("Tuple", "TupleGetItem"):
            left.append(f"{b.var.name} = {name.replace('relax.', '')}")
    return left


@tvm.transform.module_pass(opt_level=0, name="CheckIntegerOnly")
class CheckIntegerOnly:
    """Raise :class:`~tvm_intq.errors.IntqError` naming every float op left between the input
    quantize and the output dequantize (``--integer-only``); the module is returned unchanged
    when there is none. Use :func:`float_ops` to list them without failing."""

    def transform_module(self, mod, ctx):
        check_integer_only(mod)
        return mod


def check_integer_only(mod: tvm.IRModule):
    """Raise :class:`IntqError` listing the float ops left inside (see :func:`float_ops`)."""
    left = float_ops(mod)
    if left:
        raise IntqError(f"{len(left)} float op(s) left in the integer program: " + "; ".join(left))
