"""Elementwise float regions as numpy functions, so that they can be tabulated (S2 Eq. 16).

A lookup-table cluster (see :mod:`quant_points`) is a chain of elementwise Relax operators on
one quantized tensor; :func:`region_function` turns it into a numpy function of that tensor's
real values, which :func:`tvm_intq.core.intmath.lut` evaluates on all 256 int8 codes.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from tvm import relax

from tvm_intq.core import intmath
from tvm_intq.relay_passes.analysis.ir_utils import const_value, op_name, prim_value


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _softplus(call, x):
    beta, threshold = float(call.attrs.beta), float(call.attrs.threshold)
    return np.where(beta * x > threshold, x, np.log1p(np.exp(beta * x)) / beta)


# Relax operator -> numpy, as (call, *tensor args) -> array. float64 throughout: tables are
# built once at compile time, and the extra precision only removes rounding noise.
NUMPY_OPS = {
    "relax.add": lambda c, a, b: a + b,
    "relax.subtract": lambda c, a, b: a - b,
    "relax.multiply": lambda c, a, b: a * b,
    "relax.divide": lambda c, a, b: a / b,
    "relax.power": lambda c, a, b: np.power(a, b),
    "relax.maximum": lambda c, a, b: np.maximum(a, b),
    "relax.minimum": lambda c, a, b: np.minimum(a, b),
    "relax.sigmoid": lambda c, x: intmath.sigmoid(x),
    "relax.tanh": lambda c, x: np.tanh(x),
    "relax.exp": lambda c, x: np.exp(x),
    "relax.log": lambda c, x: np.log(x),
    "relax.sqrt": lambda c, x: np.sqrt(x),
    "relax.rsqrt": lambda c, x: 1.0 / np.sqrt(x),
    "relax.erf": lambda c, x: special.erf(x),
    "relax.abs": lambda c, x: np.abs(x),
    "relax.negative": lambda c, x: -x,
    "relax.square": lambda c, x: x * x,
    "relax.nn.relu": lambda c, x: np.maximum(x, 0.0),
    "relax.nn.relu6": lambda c, x: np.clip(x, 0.0, 6.0),
    "relax.nn.leakyrelu": lambda c, x: np.where(x >= 0, x, float(c.attrs.alpha) * x),
    "relax.nn.silu": lambda c, x: x * intmath.sigmoid(x),
    "relax.nn.gelu": lambda c, x: 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0))),
    "relax.nn.gelu_tanh": lambda c, x: _gelu_tanh(x),
    "relax.nn.softplus": _softplus,
    "relax.clip": lambda c, x: np.clip(x, prim_value(c.args[1]), prim_value(c.args[2])),
}


def region_function(out_var, source, lookup_binding):
    """A numpy function ``f(r)`` computing ``out_var`` from the real values ``r`` of ``source``.

    ``lookup_binding(var)`` gives the Relax value bound to a var. Returns None when the region
    between ``source`` and ``out_var`` holds anything but elementwise operators and constants.
    ``r`` has shape ``(256, 1, ..., 1)`` (rank of ``source`` + 1); constants broadcast against
    it, so per-channel constants give per-channel outputs.
    """
    ndim = len(source.ty.shape)
    steps = []  # topological list of (var, call)
    seen = set()

    def collect(var) -> bool:
        if var.same_as(source) or var in seen:
            return True
        call = lookup_binding(var)
        if op_name(call) not in NUMPY_OPS:
            return False
        if not all(collect(a) for a in call.args if isinstance(a, relax.Var)):
            return False
        seen.add(var)
        steps.append((var, call))
        return True

    if not collect(out_var):
        return None

    def f(r):
        values = {source: r.reshape((-1,) + (1,) * ndim)}
        for var, call in steps:
            args = []
            for a in call.args:
                c = const_value(a)
                if c is not None:
                    args.append(c.astype(np.float64))
                elif a in values:
                    args.append(values[a])
            values[var] = NUMPY_OPS[op_name(call)](call, *args)
        return values[out_var]

    return f


def build_table(fn, inp: intmath.QParams, out: intmath.QParams, ndim: int):
    """``(table, channel_axis)``: a 256-entry table, or ``(256, C)`` tables when the function
    varies along one axis of the tensor (``channel_axis``, counted in the tensor's axes)."""
    y = intmath.lut(fn, inp, out)
    y = y.reshape((256,) + (1,) * (ndim + 1 - y.ndim) + y.shape[1:])
    varying = [i for i, d in enumerate(y.shape[1:]) if d != 1]
    if not varying:
        return y.reshape(256), None
    if len(varying) > 1:
        return None, None
    return y.reshape(256, -1), varying[0]


def affine_of(fn, inp: intmath.QParams, ndim: int, tolerance: float = 1e-6):
    """``(a, b)`` with ``fn(r) == a * r + b`` on every real value the int8 input can hold
    (checked on all 256 codes, or 16 spread over them when the constants are large), the
    arrays shaped as the region's constants broadcast; None when ``fn`` is not affine there
    (a clamp, a sigmoid, ...)."""
    b = np.asarray(fn(np.zeros(1)), np.float64)[0]
    a = np.asarray(fn(np.ones(1)), np.float64)[0] - b
    codes = np.arange(intmath.QMIN, intmath.QMAX + 1)
    if a.size * 256 > 4_000_000:
        codes = np.linspace(intmath.QMIN, intmath.QMAX, 16).round()
    r = inp.dequantize(codes).astype(np.float64)
    got = np.asarray(fn(r), np.float64)
    want = a * r.reshape((-1,) + (1,) * ndim) + b
    scale = np.maximum(np.abs(want), np.abs(b) + np.abs(a) + 1e-30)
    if got.shape != want.shape or not np.all(np.abs(got - want) <= tolerance * scale):
        return None
    return a, b
