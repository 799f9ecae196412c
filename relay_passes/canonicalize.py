"""Bring an imported float module into the form the quantization passes read."""

from __future__ import annotations

import tvm
from tvm import relax

from tvm_intq.relay_passes.clip_kernels_to_ops import ClipKernelsToOps
from tvm_intq.relay_passes.decompose_prelu import DecomposePRelu
from tvm_intq.relay_passes.fold_batch_norm import FoldBatchNorm
from tvm_intq.relay_passes.fold_simple_constants import FoldSimpleConstants
from tvm_intq.relay_passes.name_tensors import NameTensors
from tvm_intq.relay_passes.remove_dropout import RemoveDropout
from tvm_intq.relay_passes.sink_permutes import SinkPermutes
from tvm_intq.relay_passes.split_to_slices import SplitToSlices
from tvm_intq.relay_passes.unstack_reductions import UnstackReductions


def CanonicalizeForQuantization() -> tvm.transform.Pass:
    """Inference form of a float module, ready for calibration and annotation.

    ``batch_norm`` is decomposed and folded into the preceding conv/dense, constants are
    folded (weights become constants), Clip kernels become operators, the parts of a split
    become slices (:class:`SplitToSlices`), PReLU becomes elementwise ops
    (:class:`DecomposePRelu`), layout transposes move below a conv's bias
    (:class:`SinkPermutes`: TFLite's NHWC bias after an NCHW conv), unused bindings go and
    every tensor gets a unique name (:class:`NameTensors`). Calibration and
    :func:`Annotate` must see the same canonical module: tensor names are the keys of the
    calibration ranges.
    """
    return tvm.transform.Sequential(
        [
            relax.transform.DecomposeOpsForInference(),
            RemoveDropout(),
            UnstackReductions(),
            FoldSimpleConstants(),  # numpy, the same values: FoldConstant compiles each op
            relax.transform.FoldConstant(),
            ClipKernelsToOps(),
            SplitToSlices(),
            DecomposePRelu(),
            SinkPermutes(),
            FoldBatchNorm(),
            relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(),
            relax.transform.DeadCodeElimination(),
            NameTensors(),
        ],
        name="CanonicalizeForQuantization",
    )
