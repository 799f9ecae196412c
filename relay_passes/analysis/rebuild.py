"""Rebuild ``main`` binding by binding: the one traversal the rewriting passes share.

The ONNX frontend produces a ``main`` whose body is one dataflow block; the passes that insert
bindings (naming, annotation, exposing tensors) walk it in order and emit a new one.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.errors import IntqError


def substitute(expr, vmap: dict):
    """``expr`` with every Var in ``vmap`` replaced (through calls, tuples, tuple items)."""
    if isinstance(expr, relax.Var):
        return vmap.get(expr, expr)
    if isinstance(expr, relax.Call):
        args = [substitute(a, vmap) for a in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, vmap) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, vmap), expr.index)
    return expr


def bindings_of(func: relax.Function):
    blocks = func.body.blocks
    if any(not isinstance(b, relax.DataflowBlock) for b in blocks):
        raise IntqError(
            "the model's main function has side effects outside a dataflow block; "
            "only pure dataflow graphs can be quantized"
        )
    return [b for block in blocks for b in block.bindings]


def users_of(func: relax.Function) -> dict:
    """``{var: [bindings using it]}`` over every block of ``func``; the function's result
    counts as a use (None)."""
    users: dict = {}
    for block in func.body.blocks:
        for b in block.bindings:
            for v in relax.analysis.free_vars(b.value):
                users.setdefault(v, []).append(b)
    for v in relax.analysis.free_vars(func.body.body):
        users.setdefault(v, []).append(None)
    return users


def rewrite_main(mod: tvm.IRModule, on_binding=None, on_output=None, on_start=None) -> tvm.IRModule:
    """Emit ``main`` anew. ``on_start(bb, {old param: new param})`` may emit bindings first;
    ``on_binding(bb, binding, value)`` gets each binding with its value already rewritten to
    the new vars and returns the new Var (default: emit it under its name);
    ``on_output(bb, expr)`` may replace the returned expression."""
    func = mod["main"]
    params = [relax.Var(p.name, p.ty) for p in func.params]
    vmap = dict(zip(func.params, params))
    bb = relax.BlockBuilder()
    with bb.function("main", params, attrs=dict(func.attrs) if func.attrs else None):
        with bb.dataflow():
            if on_start is not None:
                on_start(bb, dict(vmap))
            for b in bindings_of(func):
                value = substitute(b.value, vmap)
                if isinstance(value, relax.Var):  # an alias: no binding of its own
                    vmap[b.var] = value
                    continue
                vmap[b.var] = on_binding(bb, b, value) if on_binding else bb.emit(value, b.var.name)
            out = substitute(func.body.body, vmap)
            if on_output is not None:
                out = on_output(bb, out)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    built = bb.get()
    new = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv.name_hint != "main"})
    for gv, f in built.functions_items():  # functions the callbacks added (bb.call_te)
        if gv.name_hint != "main":
            new[gv] = f
    new["main"] = built["main"]
    return new
