"""A small CNN the project never tuned for (issue 18), written with ``onnx.helper``.

    stem conv 3x3/2 3->16, SiLU                                   c1
    depthwise 3x3 16, HardSwish; conv 1x1 16->16; + c1            r1  (residual add)
    squeeze-excite gate: r1 * sigmoid(conv 1x1(gap(r1)))          se
    conv 3x3/2 16->24, Relu  ||  avgpool 2x2/2, conv 1x1 16->8     concat -> 32 channels
    depthwise 3x3 32, Relu; conv 1x1 32->32; + concat             r2  (residual add)
    conv 1x1 32->10, Tanh, global average pool, flatten           output [1, 10]

Nine convs (two depthwise), two residual adds, a concat, an average pool, SiLU, HardSwish, a
sigmoid gate and tanh: every kernel kind the folding produces for a mobile CNN, in a model with
no tuning record. Random weights (seeded); the calibration/timing samples are random images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT = "input"
SHAPE = (1, 3, 56, 56)


def make_model(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x, cin, cout, k, stride=1, group=1, name=""):
        w = rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k))
        b = rng.normal(0, 0.1, cout)
        inits.extend(
            [
                numpy_helper.from_array(w.astype(np.float32), f"{name}.w"),
                numpy_helper.from_array(b.astype(np.float32), f"{name}.b"),
            ]
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.w", f"{name}.b"],
                [name],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
                group=group,
            )
        )
        return name

    def op(kind, inputs, name, **attrs):
        nodes.append(helper.make_node(kind, list(inputs), [name], **attrs))
        return name

    c1 = conv(INPUT, 3, 16, 3, stride=2, name="stem")
    c1 = op("Mul", [c1, op("Sigmoid", [c1], "stem_sig")], "stem_silu")  # SiLU
    d1 = op("HardSwish", [conv(c1, 16, 16, 3, group=16, name="dw1")], "dw1_hs")
    r1 = op("Add", [conv(d1, 16, 16, 1, name="pw1"), c1], "res1")
    gate = op(
        "Sigmoid",
        [conv(op("GlobalAveragePool", [r1], "se_gap"), 16, 16, 1, name="se_fc")],
        "se_sig",
    )
    se = op("Mul", [r1, gate], "se_out")
    a = op("Relu", [conv(se, 16, 24, 3, stride=2, name="down")], "down_relu")
    b = conv(
        op("AveragePool", [se], "pool", kernel_shape=[2, 2], strides=[2, 2]), 16, 8, 1, name="side"
    )
    cat = op("Concat", [a, b], "cat", axis=1)
    d2 = op("Relu", [conv(cat, 32, 32, 3, group=32, name="dw2")], "dw2_relu")
    r2 = op("Add", [conv(d2, 32, 32, 1, name="pw2"), cat], "res2")
    head = op("Tanh", [conv(r2, 32, 10, 1, name="head")], "head_tanh")
    op("Flatten", [op("GlobalAveragePool", [head], "gap")], "output")

    graph = helper.make_graph(
        nodes,
        "unseen_cnn",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_samples(path: Path, n: int, seed: int = 1) -> Path:
    """``n`` random images in [0, 1) (one array named after the model input, samples first)."""
    x = np.random.default_rng(seed).random((n,) + SHAPE[1:], dtype=np.float32)
    np.savez(path, **{INPUT: x})
    return path
