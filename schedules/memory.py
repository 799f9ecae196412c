"""How much memory a compiled model needs: constant bytes and peak activation bytes.

Computed on the program the build compiles (after packing and fusion, :func:`tuning_pipeline`):
the tensors ``main`` passes between kernels, each live from the kernel that writes it to the
last kernel that reads it. The peak is the largest sum of live tensor bytes at any kernel call
(inputs and outputs counted; constants are not, they are :func:`constant_bytes`). This is the
working set of the graph; the VM's memory planner reuses storage between tensors of equal
size, so the bytes it allocates can be lower, never higher than the sum of all tensors.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import const_value
from tvm_intq.schedules.pipeline import tuning_pipeline


def _tensor_bytes(ty) -> int:
    if isinstance(ty, relax.TupleType):
        return sum(_tensor_bytes(f) for f in ty.fields)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return 0
    try:
        shape = [int(d) for d in ty.shape.values]
    except (TypeError, AttributeError):
        return 0
    return int(np.prod(shape)) * np.dtype(str(ty.dtype)).itemsize


def constant_bytes(mod: tvm.IRModule) -> int:
    """Bytes of the tensor constants ``main`` holds (weights, requantize constants, tables)."""
    total, seen = 0, set()

    def visit(expr):
        nonlocal total
        value = const_value(expr)
        if value is not None and expr not in seen:
            seen.add(expr)
            total += value.nbytes

    relax.analysis.post_order_visit(mod["main"], visit)
    return total


def peak_activation_bytes(mod: tvm.IRModule, target, int8_dot=None) -> int:
    """Peak bytes of live tensors between kernels of ``mod`` as built for ``target``."""
    with target:
        fused = tuning_pipeline(int8_dot)(mod)
    func = fused["main"]
    bindings = [b for block in func.body.blocks for b in block.bindings]
    last_use = {}
    for i, b in enumerate(bindings):
        for v in relax.analysis.free_vars(b.value):
            last_use[v] = i
    for v in relax.analysis.free_vars(func.body.body):
        last_use[v] = len(bindings)
    live = {p: _tensor_bytes(p.ty) for p in func.params}
    peak = sum(live.values())
    for i, b in enumerate(bindings):
        if not isinstance(b.value, relax.Var):  # an alias holds no storage of its own
            live[b.var] = _tensor_bytes(b.var.ty)
        peak = max(peak, sum(live.values()))
        for v in [v for v in live if last_use.get(v, -1) <= i]:
            del live[v]
    return peak
