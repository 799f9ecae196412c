"""Fold the simple constant expressions of an imported model with numpy, before TVM's
``FoldConstant``.

TVM's ``FoldConstant`` evaluates each constant call by compiling it with LLVM and running
it: light_resnet50's decomposed BatchNorms (``expand_dims``, ``add``, ``sqrt``, ... over
53 channel vectors of different lengths, and a ``broadcast_to`` per weight) cost ~15 s of
CPU that way, a quarter of ``compile`` on this 2-core host. The operators folded here are
the ones whose numpy result is the same bit for bit: shape operators (a copy of the values)
and float ``add``/``subtract``/``multiply``/``divide``/``sqrt``, which IEEE 754 rounds
correctly in both (TVM's LLVM code is built without fast-math). Anything else (casts,
``rsqrt``, ``power``, integer division) is left to ``FoldConstant``, so the module it makes
is the one it made before (``tests/test_fold_simple_constants.py``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name
from tvm_intq.relay_passes.analysis.rebuild import rewrite_main

_ARITHMETIC = {
    "relax.add": np.add,
    "relax.subtract": np.subtract,
    "relax.multiply": np.multiply,
    "relax.divide": np.divide,
}
_FLOATS = ("float16", "float32", "float64")


def _static_shape(var) -> tuple | None:
    shape = getattr(var.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def fold(name: str, call, args: list, out_shape: tuple | None):
    """The numpy value of ``call`` (operator ``name``) on constant ``args``, or None when it is
    not one this pass folds."""
    if name in _ARITHMETIC or name == "relax.sqrt":
        if any(str(a.dtype) not in _FLOATS for a in args):
            return None
        if len({str(a.dtype) for a in args}) != 1:
            return None
        with np.errstate(all="ignore"):  # inf and nan as IEEE makes them, as TVM's code does
            out = np.sqrt(args[0]) if name == "relax.sqrt" else _ARITHMETIC[name](*args)
        return np.asarray(out, dtype=args[0].dtype)
    if out_shape is None:
        return None
    (x,) = args[:1]
    if name == "relax.expand_dims":
        out = np.expand_dims(x, tuple(_ints(call.attrs.axis)))
    elif name == "relax.permute_dims":
        axes = call.attrs.axes
        out = np.transpose(x, None if axes is None else _ints(axes))
    elif name == "relax.squeeze":
        axis = call.attrs.axis
        out = np.squeeze(x, None if axis is None else tuple(_ints(axis)))
    elif name == "relax.broadcast_to":
        out = np.broadcast_to(x, out_shape)
    elif name == "relax.reshape":
        out = np.reshape(x, out_shape)
    else:
        return None
    return np.ascontiguousarray(out) if out.shape == out_shape else None


@tvm.transform.module_pass(opt_level=0, name="FoldSimpleConstants")
class FoldSimpleConstants:
    """Replace each call of ``main`` whose inputs are all constants, and whose operator
    :func:`fold` knows, by its value (module docstring)."""

    def transform_module(self, mod, ctx):
        if "main" not in [gv.name_hint for gv in mod.get_global_vars()]:
            return mod

        def binding(bb, b, value):
            name = op_name(value)
            if name is not None:
                tensors = [a for a in value.args if not isinstance(a, relax.ShapeExpr)]
                args = [const_value(a) for a in tensors]
                if args and all(a is not None for a in args):
                    out = fold(name, value, args, _static_shape(b.var))
                    if out is not None:
                        return relax.const(out, str(out.dtype))
            return bb.emit(value, b.var.name)

        return rewrite_main(mod, binding)
