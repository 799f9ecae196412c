"""The parts a model concatenates into each of its outputs, as element masks.

A detection head returns one tensor holding box coordinates beside class scores, or the boxes
of several feature maps one after the other; one SQNR over the whole tensor is the SQNR of its
largest part (27 dB while the class part sits at 0 dB). :func:`output_parts` finds, for every
graph output, the concat it is made of (directly, or through data movement: reshape,
transpose, squeeze, expand_dims, flatten) and labels each element of the output with the
concat input it came from: the label array is the concat's layout (part ``i`` along its axis),
carried through the same data movement in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from tvm_intq.relay_passes.analysis.ir_utils import op_name, shape_of
from tvm_intq.relay_passes.analysis.rebuild import bindings_of

#: Data movement whose element mapping is replayed on the labels.
_MOVES = {
    "relax.reshape",
    "relax.permute_dims",
    "relax.squeeze",
    "relax.expand_dims",
    "relax.flatten",
}


@dataclass
class OutputParts:
    """The parts of one graph output: ``labels`` (the output's shape, batch axis included)
    holds for each element the index of the part in ``names`` it came from."""

    names: list  # the tensor each part is (the concat's inputs)
    labels: np.ndarray
    axis: int  # the concat's axis (in the concat's own layout)

    def masks(self, shape) -> list[np.ndarray]:
        """One boolean mask per part over an output of ``shape`` (samples stacked on axis 0)."""
        reps = [max(1, shape[0] // self.labels.shape[0])] + [1] * (self.labels.ndim - 1)
        labels = np.tile(self.labels, reps) if reps[0] > 1 else self.labels
        return [labels == i for i in range(len(self.names))]


def returned_outputs(func) -> list:
    """The expressions main returns, one per output (a returned tuple spread out)."""
    body = func.body.body
    values = {b.var: b.value for b in bindings_of(func)}
    while isinstance(body, relax.Var) and isinstance(values.get(body), (relax.Var, relax.Tuple)):
        body = values[body]
    return list(body.fields) if isinstance(body, relax.Tuple) else [body]


def output_parts(func: relax.Function) -> list[OutputParts | None]:
    """For each output of ``func``: its concatenated parts, or None when it is no concat (or
    the data movement after it is not one whose mapping is replayed here)."""
    values = {b.var: b.value for b in bindings_of(func)}
    result = []
    for out in returned_outputs(func):
        chain = []  # data movement from the concat to the output, innermost last
        var = out
        while isinstance(var, relax.Var):
            value = values.get(var)
            if isinstance(value, relax.Var):
                var = value
                continue
            if op_name(value) in _MOVES:
                chain.append(value)
                var = value.args[0]
                continue
            break
        value = values.get(var) if isinstance(var, relax.Var) else None
        parts = _concat_labels(value)
        if parts is None:
            result.append(None)
            continue
        names, labels, axis = parts
        try:
            for move in reversed(chain):
                labels = _replay(move, labels)
        except (ValueError, TypeError):
            result.append(None)
            continue
        if shape_of(out) is not None and labels.shape != shape_of(out):
            result.append(None)
            continue
        result.append(OutputParts(names, labels, axis))
    return result


def _concat_labels(value):
    if op_name(value) != "relax.concat" or not isinstance(value.args[0], relax.Tuple):
        return None
    fields = value.args[0].fields
    shapes = [shape_of(f) for f in fields]
    if len(fields) < 2 or any(s is None for s in shapes):
        return None
    axis = int(value.attrs.axis) % len(shapes[0])
    blocks = [np.full(s, i, np.int32) for i, s in enumerate(shapes)]
    names = [f.name if isinstance(f, relax.Var) else f"part {i}" for i, f in enumerate(fields)]
    return names, np.concatenate(blocks, axis=axis), axis


def _replay(call, labels: np.ndarray) -> np.ndarray:
    name = op_name(call)
    if name == "relax.permute_dims":
        axes = None if call.attrs.axes is None else [int(a) for a in call.attrs.axes]
        return np.transpose(labels, axes)
    shape = shape_of(call)
    if shape is None:
        raise ValueError("no static shape")
    return labels.reshape(shape)  # reshape, squeeze, expand_dims, flatten: row-major order
