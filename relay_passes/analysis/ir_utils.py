"""Small helpers for reading Relax IR that several passes share."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def op_name(expr) -> str | None:
    """``"relax.nn.conv2d"`` for a call of a Relax operator, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def const_value(expr) -> np.ndarray | None:
    """The numpy value of a Relax tensor constant (None for anything else)."""
    if isinstance(expr, tvm.ir.GenericConst) and isinstance(expr.ty, relax.TensorType):
        return expr.value.numpy()
    return None


def prim_value(expr) -> float:
    """The number a Relax ``PrimValue`` holds (clip bounds)."""
    return float(expr.value.value if hasattr(expr.value, "value") else expr.value)


def tensor_type(expr):
    ty = expr.ty if hasattr(expr, "ty") else None
    return ty if isinstance(ty, relax.TensorType) else None


def dtype_of(expr) -> str | None:
    ty = tensor_type(expr)
    return None if ty is None else str(ty.dtype)


def shape_of(expr) -> tuple[int, ...] | None:
    ty = tensor_type(expr)
    if ty is None or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def is_float(expr) -> bool:
    dt = dtype_of(expr)
    return dt is not None and dt.startswith(("float", "bfloat"))


def channel_axis_of(value: np.ndarray, ndim: int) -> int | None | bool:
    """Where a constant varies when broadcast against an ``ndim``-D tensor.

    Returns None for a scalar-like constant, the (non-negative) axis when it varies along
    exactly one axis, and False when it varies along several (not a per-channel constant).
    """
    shape = (1,) * (ndim - value.ndim) + tuple(value.shape)
    if len(shape) > ndim:
        return False
    axes = [i for i, d in enumerate(shape) if d != 1]
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else False


def returned_vars(expr) -> set:
    """The Vars a function body returns (through nested tuples)."""
    if isinstance(expr, relax.Var):
        return {expr}
    if isinstance(expr, relax.Tuple):
        return set().union(*(returned_vars(f) for f in expr.fields))
    return set()


def mutate_functions(mutator, mod: tvm.IRModule) -> tvm.IRModule:
    """Run a ``PyExprMutator`` over every Relax function of ``mod``, then drop dead code."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return relax.transform.DeadCodeElimination()(mutator.builder_.get())


def linear_layer_axes(call) -> tuple[int, int] | None:
    """``(output-channel axis of the result, output-channel axis of the weight)`` for a
    conv2d (NCHW/OIHW), an ungrouped conv2d_transpose (NCHW/IOHW) or a 2-D-weight matmul whose
    weight is a constant; else None."""
    name = op_name(call)
    if name == "relax.nn.conv2d_transpose":
        a = call.attrs
        if (
            (str(a.data_layout), str(a.kernel_layout), str(a.out_layout))
            == ("NCHW", "IOHW", "NCHW")
            and int(a.groups) == 1
            and const_value(call.args[1]) is not None
        ):
            return 1, 1
    if name == "relax.nn.conv2d":
        a = call.attrs
        if (
            str(a.data_layout) == "NCHW"
            and str(a.kernel_layout) == "OIHW"
            and str(a.out_layout) == "NCHW"
            and const_value(call.args[1]) is not None
        ):
            return 1, 0
    if name == "relax.matmul":
        w = const_value(call.args[1])
        if w is not None and w.ndim == 2:
            return len(call.ty.shape) - 1, 1
    return None
