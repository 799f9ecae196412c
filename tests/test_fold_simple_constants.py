"""FoldSimpleConstants (relay_passes/fold_simple_constants.py) folds with numpy what TVM's
FoldConstant would fold by compiling each call, to the same values bit for bit: per operator
on awkward values, and whole models prepared with and without it are structurally equal
(constants compared by value)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from tvm import relax

from tvm_intq.demo import bundled
from tvm_intq.frontends import import_model
from tvm_intq.relay_passes.clip_kernels_to_ops import ClipKernelsToOps
from tvm_intq.relay_passes.fold_batch_norm import FoldBatchNorm
from tvm_intq.relay_passes.fold_simple_constants import FoldSimpleConstants
from tvm_intq.relay_passes.name_tensors import NameTensors
from tvm_intq.relay_passes.remove_dropout import RemoveDropout
from tvm_intq.relay_passes.unstack_reductions import UnstackReductions

RNG = np.random.default_rng(0)


def awkward(shape):
    """Values over many exponents, denormals and exact ties among them."""
    x = RNG.standard_normal(shape).astype(np.float32) * np.float32(10.0) ** RNG.integers(
        -40, 30, shape
    ).astype(np.float32)
    x.flat[:3] = [1e-45, 3.4e38, 1.0 / 3.0]
    return x


def _one_call(op, args, out_shape):
    x = relax.Var("x", relax.TensorType(out_shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            c = bb.emit(op(*args))
            y = bb.emit_output(relax.op.add(x, c))
        bb.emit_func_output(y)
    return bb.get()


CASES = [
    ("add", lambda a, b: relax.op.add(a, b), 2, (3, 1, 4), (3, 5, 4)),
    ("subtract", lambda a, b: relax.op.subtract(a, b), 2, (3, 5, 4), (3, 5, 4)),
    ("multiply", lambda a, b: relax.op.multiply(a, b), 2, (1, 5, 1), (3, 5, 4)),
    ("divide", lambda a, b: relax.op.divide(a, b), 2, (3, 5, 4), (3, 5, 4)),
    ("sqrt", lambda a: relax.op.sqrt(relax.op.abs(a)), 1, (3, 5, 4), (3, 5, 4)),
    ("expand_dims", lambda a: relax.op.expand_dims(a, [0, 2]), 1, (5, 4), (1, 5, 1, 4)),
    ("broadcast_to", lambda a: relax.op.broadcast_to(a, (3, 5, 4)), 1, (5, 1), (3, 5, 4)),
    ("reshape", lambda a: relax.op.reshape(a, (4, 15)), 1, (3, 5, 4), (4, 15)),
    ("permute_dims", lambda a: relax.op.permute_dims(a, [2, 0, 1]), 1, (3, 5, 4), (4, 3, 5)),
    ("squeeze", lambda a: relax.op.squeeze(a, [1]), 1, (3, 1, 4), (3, 4)),
]


@pytest.mark.parametrize("name, op, n, shape, out", CASES, ids=[c[0] for c in CASES])
def test_each_operator_folds_to_what_fold_constant_makes(name, op, n, shape, out):
    args = [relax.const(awkward(shape if i == 0 else out), "float32") for i in range(n)]
    if name == "multiply":
        args[1] = relax.const(awkward(out), "float32")
    mod = _one_call(op, args, out)
    ours = FoldSimpleConstants()(mod)
    theirs = relax.transform.FoldConstant()(mod)
    if name != "sqrt":  # abs is not ours to fold: sqrt(abs(c)) stays for FoldConstant
        calls = [
            b.value for b in ours["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)
        ]
        assert len(calls) == 1, f"{name} was not folded"  # only the add of x is left
    tidy = relax.transform.CanonicalizeBindings()  # our rewrite leaves an alias binding
    assert tvm_ffi.structural_equal(tidy(relax.transform.FoldConstant()(ours)), tidy(theirs))


def _prepare(mod, ours: bool):
    """CanonicalizeForQuantization with or without our pass."""
    t = relax.transform
    pre = [FoldSimpleConstants()] if ours else []
    return tvm.transform.Sequential(
        [t.DecomposeOpsForInference(), RemoveDropout(), UnstackReductions()]
        + pre
        + [t.FoldConstant(), ClipKernelsToOps(), FoldBatchNorm(), t.FoldConstant()]
        + [t.CanonicalizeBindings(), t.DeadCodeElimination(), NameTensors()]
    )(mod)


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize(
    "path", [bundled("mnist_cnn.onnx"), LIGHT / "light_squeezenet.onnx"], ids=lambda p: p.stem
)
def test_prepared_models_are_the_same(path):
    mod, _ = import_model(path)
    assert tvm_ffi.structural_equal(_prepare(mod, True), _prepare(mod, False))
