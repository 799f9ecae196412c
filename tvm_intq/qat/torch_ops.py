"""The canonical module's float operators in torch: the differentiable surrogate of QAT.

:class:`~tvm_intq.qat.model.QatModel` runs the canonical Relax module (the one calibration
and ``Annotate`` read) binding by binding with these functions, so gradients flow through
the same graph the integer program is folded from. Each entry is
``fn(call, *args) -> tensor``; tensor arguments arrive as torch tensors, shapes as tuples of
ints, prim values (clip bounds) as floats. The batch axis is free where the module keeps
axis 0 as its batch of 1: a reshape from and to a leading 1 keeps the runtime batch.
(:data:`~tvm_intq.relay_passes.analysis.lookup_tables.NUMPY_OPS` is the numpy counterpart the
lookup tables are built from; these must stay differentiable.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from tvm_intq.evaluation.reference import OPS as REFERENCE_OPS
from tvm_intq.relay_passes.analysis.ir_utils import shape_of


def _ints(seq) -> list[int]:
    return [int(v) for v in seq]


def _pad_args(padding, n: int) -> list[int]:
    """Relax ``[before_1..before_n, after_1..after_n]`` -> ``F.pad``'s last-axis-first pairs."""
    p = _ints(padding)
    p = p * 2 if len(p) == n else p
    return [v for i in reversed(range(n)) for v in (p[i], p[i + n])]


def _conv2d(call, x, w):
    a = call.attrs
    if (str(a.data_layout), str(a.kernel_layout)) != ("NCHW", "OIHW"):
        raise NotImplementedError(f"conv2d layout {a.data_layout}/{a.kernel_layout}")
    x = F.pad(x, _pad_args(a.padding, 2))
    return F.conv2d(x, w, None, _ints(a.strides), 0, _ints(a.dilation), int(a.groups))


def _max_pool2d(call, x):
    a = call.attrs
    x = F.pad(x, _pad_args(a.padding, 2), value=-math.inf)
    return F.max_pool2d(
        x, _ints(a.pool_size), _ints(a.strides), 0, _ints(a.dilation), ceil_mode=bool(a.ceil_mode)
    )


def _avg_pool2d(call, x):
    a = call.attrs
    if any(int(d) != 1 for d in a.dilation):
        raise NotImplementedError("avg_pool2d with dilation")
    p = _ints(a.padding)
    if p[0] != p[2] or p[1] != p[3]:
        raise NotImplementedError("avg_pool2d with asymmetric padding")
    return F.avg_pool2d(
        x, _ints(a.pool_size), _ints(a.strides), p[:2], bool(a.ceil_mode), bool(a.count_include_pad)
    )


def _pad(call, x):
    """Relax ``pad_width`` is ``[before_0, after_0, before_1, ...]`` from the first axis."""
    w = _ints(call.attrs.pad_width)
    pairs = [w[i : i + 2] for i in range(0, len(w), 2)]
    return F.pad(
        x, [v for pair in reversed(pairs) for v in pair], value=float(call.attrs.pad_value)
    )


def _resize2d(call, x, size):
    """Nearest resize as a gather: the source index of each output pixel is what the numpy
    reference evaluator computes (TVM's coordinate arithmetic), so the moved int8 values
    are the integer program's."""
    h, w = x.shape[-2:]
    src = REFERENCE_OPS["relax.image.resize2d"](
        call, np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w), size
    )
    idx = torch.from_numpy(src.astype(np.int64).reshape(-1))
    return x.reshape(*x.shape[:-2], h * w)[..., idx].reshape(*x.shape[:-2], *src.shape[-2:])


def _conv2d_transpose(call, x, w):
    a = call.attrs
    if (str(a.data_layout), str(a.kernel_layout)) != ("NCHW", "IOHW"):
        raise NotImplementedError(f"conv2d_transpose layout {a.data_layout}/{a.kernel_layout}")
    p = _ints(a.padding)
    if p[0] != p[2] or p[1] != p[3]:
        raise NotImplementedError("conv2d_transpose with asymmetric padding")
    return F.conv_transpose2d(
        x,
        w,
        None,
        _ints(a.strides),
        p[:2],
        _ints(a.output_padding),
        int(a.groups),
        _ints(a.dilation),
    )


def _reshape(call, x, shape):
    shape = list(shape)
    if shape and shape[0] == 1 and shape_of(call.args[0])[0] == 1:  # batch 1 -> any batch
        shape[0] = x.shape[0]
    return x.reshape(shape)


def _strided_slice(call, x, axes, begin, end, strides=None):
    index = [slice(None)] * x.dim()
    strides = strides if strides is not None else [1] * len(axes)
    for ax, b, e, s in zip(axes, begin, end, strides):
        index[int(ax)] = slice(int(b), int(e), int(s))
    return x[tuple(index)]


def _axes(call, x):
    return None if call.attrs.axis is None else [int(a) % x.dim() for a in call.attrs.axis]


def _softplus(call, x):
    return F.softplus(x, float(call.attrs.beta), float(call.attrs.threshold))


TORCH_OPS = {
    "relax.nn.conv2d": _conv2d,
    "relax.nn.conv2d_transpose": _conv2d_transpose,
    "relax.image.resize2d": _resize2d,
    "relax.matmul": lambda c, a, b: torch.matmul(a, b),
    "relax.add": lambda c, a, b: a + b,
    "relax.subtract": lambda c, a, b: a - b,
    "relax.multiply": lambda c, a, b: a * b,
    "relax.divide": lambda c, a, b: a / b,
    "relax.power": lambda c, a, b: torch.pow(a, b),
    "relax.maximum": lambda c, a, b: torch.maximum(a, torch.as_tensor(b, dtype=a.dtype)),
    "relax.minimum": lambda c, a, b: torch.minimum(a, torch.as_tensor(b, dtype=a.dtype)),
    "relax.sigmoid": lambda c, x: torch.sigmoid(x),
    "relax.tanh": lambda c, x: torch.tanh(x),
    "relax.exp": lambda c, x: torch.exp(x),
    "relax.log": lambda c, x: torch.log(x),
    "relax.sqrt": lambda c, x: torch.sqrt(x),
    "relax.rsqrt": lambda c, x: torch.rsqrt(x),
    "relax.erf": lambda c, x: torch.erf(x),
    "relax.abs": lambda c, x: torch.abs(x),
    "relax.negative": lambda c, x: -x,
    "relax.square": lambda c, x: x * x,
    "relax.nn.relu": lambda c, x: F.relu(x),
    "relax.nn.relu6": lambda c, x: torch.clamp(x, 0.0, 6.0),
    "relax.clip": lambda c, x, lo, hi: torch.clamp(x, lo, hi),
    "relax.nn.leakyrelu": lambda c, x: F.leaky_relu(x, float(c.attrs.alpha)),
    "relax.nn.silu": lambda c, x: F.silu(x),
    "relax.nn.gelu": lambda c, x: F.gelu(x),
    "relax.nn.gelu_tanh": lambda c, x: F.gelu(x, approximate="tanh"),
    "relax.nn.softplus": _softplus,
    "relax.nn.softmax": lambda c, x: torch.softmax(x, int(c.attrs.axis)),
    "relax.nn.max_pool2d": _max_pool2d,
    "relax.nn.avg_pool2d": _avg_pool2d,
    "relax.mean": lambda c, x: torch.mean(x, dim=_axes(c, x), keepdim=bool(c.attrs.keepdims)),
    "relax.concat": lambda c, xs: torch.cat(list(xs), dim=int(c.attrs.axis)),
    "relax.reshape": _reshape,
    "relax.permute_dims": lambda c, x: x.permute(
        *(range(x.dim() - 1, -1, -1) if c.attrs.axes is None else _ints(c.attrs.axes))
    ),
    "relax.squeeze": lambda c, x: (
        x.squeeze(_axes(c, x)) if c.attrs.axis is not None else x.squeeze()
    ),
    "relax.expand_dims": lambda c, x: x.reshape(_expanded(x.shape, _ints(c.attrs.axis))),
    "relax.nn.pad": _pad,
    "relax.strided_slice": _strided_slice,
}


def _expanded(shape, axes) -> list[int]:
    out = list(shape)
    n = len(out) + len(axes)
    for a in sorted(x % n for x in axes):
        out.insert(a, 1)
    return out
