"""Find the float arithmetic left inside the integer region of a folded module."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.errors import IntqError
from tvm_intq.relay_passes.analysis.ir_utils import is_float, op_name, returned_vars
from tvm_intq.relay_passes.analysis.quant_points import is_passthrough
from tvm_intq.relay_passes.analysis.rebuild import bindings_of

# Float values may enter only through the input quantize and leave through the output
# dequantize; everything else between them should be integer.
_BOUNDARY = {"relax.quantize", "relax.dequantize"}


def output_tail(func) -> set:
    """The bindings after the program's last integer values: dequantizes, concats and data
    movement whose results reach the outputs only through each other (a detection head's
    parts, each dequantized with its own scale and concatenated in the output)."""
    outputs = returned_vars(func.body.body)
    bindings = bindings_of(func)
    readers: dict = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            readers.setdefault(v, []).append(b.var)
    tail: set = set()
    for b in reversed(bindings):
        value = b.value
        name = op_name(value)
        moves = (
            name in ("relax.dequantize", "relax.concat")
            or isinstance(value, (relax.Tuple, relax.TupleGetItem))
            or (name is not None and is_passthrough(value))
        )
        users = readers.get(b.var, [])
        if moves and (b.var in outputs or users) and all(u in tail for u in users):
            tail.add(b.var)
    return tail


def float_ops(mod: tvm.IRModule) -> list[str]:
    """``"<tensor> = <op>"`` for every float computation of ``main`` other than the
    quantize of a graph input and the output tail (:func:`output_tail`: the dequantize of
    a graph output, and the concat and data movement of dequantized parts after it)."""
    func = mod["main"]
    params = set(func.params)
    tail = output_tail(func)
    left = []
    for b in bindings_of(func):
        value = b.value
        name = op_name(value) or type(value).__name__
        if name == "relax.quantize" and value.args[0] in params:
            continue
        if b.var in tail:
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
