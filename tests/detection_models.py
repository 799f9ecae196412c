"""A YOLO-style detector built with ``onnx.helper`` (test helper): the architecture of
YOLOv8's head on a two-stage backbone, random weights, 64x64 input.

    stem conv -> conv -> C2f (split, conv on one half, concat, 1x1 conv) -> conv
    per scale (stride 4, 8): box conv (4 ch) and class conv (nc ch), concatenated, reshaped
    concat over the scales -> split into box distances and class logits
    boxes: relu -> (anchors - lt, anchors + rb) -> concat -> * stride (pixels of a 320 image)
    scores: sigmoid
    output0 = concat(boxes, scores) on the channel axis: [1, 4 + nc, anchors]

So the output holds box coordinates of 0-320 beside class probabilities of 0-1, as YOLOv8's
ONNX export does (``torch.cat((dbox, cls.sigmoid()), 1)``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

SIZE = 64
STRIDES = (4, 8)
PIXELS = 320 / SIZE  # boxes in the coordinates of a 320x320 image (YOLO's letterbox)


def _conv(name, x, cin, cout, k, rng, stride=1, act=True):
    w = rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))
    b = rng.standard_normal(cout) * 0.1
    inits = [
        numpy_helper.from_array(w.astype(np.float32), name + "_w"),
        numpy_helper.from_array(b.astype(np.float32), name + "_b"),
    ]
    nodes = [
        oh.make_node(
            "Conv", [x, name + "_w", name + "_b"], [name], pads=[k // 2] * 4, strides=[stride] * 2
        )
    ]
    if not act:
        return nodes, inits, name
    nodes += [  # SiLU as the exporter writes it
        oh.make_node("Sigmoid", [name], [name + "_sg"]),
        oh.make_node("Mul", [name, name + "_sg"], [name + "_a"]),
    ]
    return nodes, inits, name + "_a"


def yolo_head(nc: int = 3, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def add(n, i, out):
        nodes.extend(n)
        inits.extend(i)
        return out

    def ints(name, value):
        inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return name

    x = add(*_conv("stem", "images", 3, 8, 3, rng, 2))
    x1 = add(*_conv("c1", x, 8, 16, 3, rng, 2))
    nodes.append(oh.make_node("Split", [x1, ints("c2f_sizes", [8, 8])], ["s_a", "s_b"], axis=1))
    y = add(*_conv("c2f_m", "s_b", 8, 8, 3, rng))
    nodes.append(oh.make_node("Concat", ["s_a", "s_b", y], ["c2f_cat"], axis=1))
    x1 = add(*_conv("c2f_out", "c2f_cat", 24, 16, 1, rng))
    x2 = add(*_conv("c2", x1, 16, 16, 3, rng, 2))
    per_scale = []
    for i, f in enumerate((x1, x2)):
        hw = SIZE // STRIDES[i]
        box = add(*_conv(f"box{i}", f, 16, 4, 1, rng, act=False))
        cls = add(*_conv(f"cls{i}", f, 16, nc, 1, rng, act=False))
        nodes.append(oh.make_node("Concat", [box, cls], [f"cat{i}"], axis=1))
        shape = ints(f"shape{i}", [1, 4 + nc, hw * hw])
        nodes.append(oh.make_node("Reshape", [f"cat{i}", shape], [f"cat{i}_r"]))
        per_scale.append(f"cat{i}_r")
    nodes.append(oh.make_node("Concat", per_scale, ["xcat"], axis=2))
    nodes.append(
        oh.make_node("Split", ["xcat", ints("head_sizes", [4, nc])], ["box", "cls"], axis=1)
    )
    anchors, strides = [], []
    for s in STRIDES:
        hw = SIZE // s
        gy, gx = np.meshgrid(np.arange(hw) + 0.5, np.arange(hw) + 0.5, indexing="ij")
        anchors.append(np.stack([gx.ravel(), gy.ravel()]))
        strides.append(np.full(hw * hw, s * PIXELS))
    inits.append(
        numpy_helper.from_array(np.concatenate(anchors, 1)[None].astype(np.float32), "anchors")
    )
    inits.append(
        numpy_helper.from_array(np.concatenate(strides)[None, None].astype(np.float32), "strides")
    )
    nodes += [
        oh.make_node("Relu", ["box"], ["dist"]),
        oh.make_node("Slice", ["dist", ints("z0", [0]), ints("z2", [2]), ints("z1", [1])], ["lt"]),
        oh.make_node("Slice", ["dist", "z2", ints("z4", [4]), "z1"], ["rb"]),
        oh.make_node("Sub", ["anchors", "lt"], ["x1y1"]),
        oh.make_node("Add", ["anchors", "rb"], ["x2y2"]),
        oh.make_node("Concat", ["x1y1", "x2y2"], ["xyxy"], axis=1),
        oh.make_node("Mul", ["xyxy", "strides"], ["dbox"]),
        oh.make_node("Sigmoid", ["cls"], ["scores"]),
        oh.make_node("Concat", ["dbox", "scores"], ["output0"], axis=1),
    ]
    n_anchor = sum((SIZE // s) ** 2 for s in STRIDES)
    graph = oh.make_graph(
        nodes,
        "yolo_head",
        [oh.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [oh.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc, n_anchor])],
        inits,
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def images(n: int, seed: int = 1) -> np.ndarray:
    """Smooth random images in [0, 1] (blobs, not white noise, so that features vary)."""
    rng = np.random.default_rng(seed)
    low = rng.random((n, 3, SIZE // 8, SIZE // 8))
    return np.repeat(np.repeat(low, 8, axis=2), 8, axis=3).astype(np.float32)
