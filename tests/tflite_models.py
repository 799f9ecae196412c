"""A small fully-integer TFLite model, written with the flatbuffers builder (test helper).

No converter is needed (TensorFlow is a multi-GB install): the ``tflite`` package's generated
schema code writes the flatbuffer directly. The model is what TensorFlow Lite's full-integer
post-training quantization produces for a conv net with float input and output::

    x float32 (1, 8, 8, 3)  NHWC
    QUANTIZE                        -> int8, per tensor
    CONV_2D 3x3 SAME + fused RELU   -> int8; weights int8 per output channel, int32 bias
    DEPTHWISE_CONV_2D 3x3 SAME      -> int8; weights int8 per channel, int32 bias
    ADD (residual, RELU)            -> int8
    MAX_POOL_2D 2x2                 -> int8 (same scale)
    RESHAPE (1, 64)                 -> int8 (same scale)
    FULLY_CONNECTED (10 outputs)    -> int8; weights int8 per output channel, int32 bias
    DEQUANTIZE                      -> float32 (1, 10)

``reference(x)`` computes the same network in numpy from the model's own parameters,
``Q(op(DQ(inputs)))`` layer by layer in float64: the integer program must match it within
one output step (TFLite's kernels round the same real numbers in fixed point).
"""

from __future__ import annotations

import importlib

import flatbuffers
import numpy as np

RNG = np.random.default_rng(7)
I8, I32, F32 = np.int8, np.int32, np.float32
IN_SHAPE, C1, OUT = (1, 8, 8, 3), 8, 10

# activation tensors: name -> (shape, scale, zero point); float tensors have scale None
ACT = {
    "x": (IN_SHAPE, None, None),
    "xq": (IN_SHAPE, 0.0241, 3),
    "conv": ((1, 8, 8, C1), 0.0317, -128),
    "dw": ((1, 8, 8, C1), 0.0523, -6),
    "add": ((1, 8, 8, C1), 0.0611, -128),
    "pool": ((1, 4, 4, C1), 0.0611, -128),
    "flat": ((1, 4 * 4 * C1), 0.0611, -128),
    "fc": ((1, OUT), 0.0937, 5),
    "y": ((1, OUT), None, None),
}


def _weights():
    w1 = RNG.integers(-127, 128, (C1, 3, 3, 3)).astype(I8)  # OHWI
    s1 = RNG.uniform(2e-3, 5e-3, C1).astype(F32)
    w2 = RNG.integers(-127, 128, (1, 3, 3, C1)).astype(I8)  # 1 H W C (depthwise)
    s2 = RNG.uniform(4e-3, 8e-3, C1).astype(F32)
    w3 = RNG.integers(-127, 128, (OUT, 4 * 4 * C1)).astype(I8)  # (out, in)
    s3 = RNG.uniform(2e-3, 4e-3, OUT).astype(F32)
    b = {
        "b1": (RNG.integers(-2000, 2000, C1).astype(I32), ACT["xq"][1] * s1),
        "b2": (RNG.integers(-500, 500, C1).astype(I32), ACT["conv"][1] * s2),
        "b3": (RNG.integers(-3000, 3000, OUT).astype(I32), ACT["flat"][1] * s3),
    }
    return {"w1": (w1, s1, 0), "w2": (w2, s2, 3), "w3": (w3, s3, 0)}, b


WEIGHTS, BIASES = _weights()


def build(quantized: bool = True) -> bytes:
    """The model as a .tflite flatbuffer; ``quantized=False``: the same network in float32
    (weights ``s * Qw``, biases ``s * B``, no QUANTIZE/DEQUANTIZE)."""
    from tflite import ActivationFunctionType as Act
    from tflite import BuiltinOperator as Op
    from tflite import BuiltinOptions as Opt
    from tflite import Padding, TensorType

    # the generated builder functions live in the modules (the package exports the classes)
    (
        AddOptions,
        Buffer,
        Conv2DOptions,
        DepthwiseConv2DOptions,
        FullyConnectedOptions,
        Model,
        Operator,
        OperatorCode,
        Pool2DOptions,
        QuantizationParameters,
        ReshapeOptions,
        SubGraph,
        Tensor,
    ) = (
        importlib.import_module(f"tflite.{m}")
        for m in (
            "AddOptions",
            "Buffer",
            "Conv2DOptions",
            "DepthwiseConv2DOptions",
            "FullyConnectedOptions",
            "Model",
            "Operator",
            "OperatorCode",
            "Pool2DOptions",
            "QuantizationParameters",
            "ReshapeOptions",
            "SubGraph",
            "Tensor",
        )
    )

    b = flatbuffers.Builder(4096)
    buffers = [None]  # buffer 0: empty, by convention
    tensors, index = [], {}

    def vector(start, values, prepend):
        start(b, len(values))
        for v in reversed(values):
            prepend(v)
        return b.EndVector()

    def tensor(name, shape, ttype, scale=None, zp=None, axis=0, data=None):
        if data is not None:
            buffers.append(np.ascontiguousarray(data).tobytes())
        q = None
        if scale is not None:
            scale, zp = (
                np.atleast_1d(np.asarray(scale, F32)),
                np.atleast_1d(np.asarray(zp, np.int64)),
            )
            sv = vector(QuantizationParameters.StartScaleVector, list(scale), b.PrependFloat32)
            zv = vector(QuantizationParameters.StartZeroPointVector, list(zp), b.PrependInt64)
            QuantizationParameters.Start(b)
            QuantizationParameters.AddScale(b, sv)
            QuantizationParameters.AddZeroPoint(b, zv)
            QuantizationParameters.AddQuantizedDimension(b, axis)
            q = QuantizationParameters.End(b)
        sh = vector(Tensor.StartShapeVector, list(shape), b.PrependInt32)
        nm = b.CreateString(name)
        Tensor.Start(b)
        Tensor.AddShape(b, sh)
        Tensor.AddType(b, ttype)
        Tensor.AddBuffer(b, len(buffers) - 1 if data is not None else 0)
        Tensor.AddName(b, nm)
        if q is not None:
            Tensor.AddQuantization(b, q)
        index[name] = len(tensors)
        tensors.append(Tensor.End(b))

    for name, (shape, scale, zp) in ACT.items():
        if quantized and scale is not None:
            tensor(name, shape, TensorType.INT8, scale, zp)
        else:
            tensor(name, shape, TensorType.FLOAT32)
    for name, (w, s, axis) in WEIGHTS.items():
        if quantized:
            tensor(name, w.shape, TensorType.INT8, s, np.zeros_like(s, np.int64), axis, w)
        else:
            real = w * s.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
            tensor(name, w.shape, TensorType.FLOAT32, data=real.astype(F32))
    for name, (v, s) in BIASES.items():
        if quantized:
            tensor(name, v.shape, TensorType.INT32, s, np.zeros_like(s, np.int64), 0, v)
        else:
            tensor(name, v.shape, TensorType.FLOAT32, data=(v * s).astype(F32))
    tensor("shape", (2,), TensorType.INT32, data=np.array(ACT["flat"][0], I32))

    codes = [
        Op.QUANTIZE,
        Op.CONV_2D,
        Op.DEPTHWISE_CONV_2D,
        Op.ADD,
        Op.MAX_POOL_2D,
        Op.RESHAPE,
        Op.FULLY_CONNECTED,
        Op.DEQUANTIZE,
    ]

    def options(kind):
        if kind == Op.CONV_2D:
            Conv2DOptions.Start(b)
            Conv2DOptions.AddPadding(b, Padding.SAME)
            Conv2DOptions.AddStrideW(b, 1)
            Conv2DOptions.AddStrideH(b, 1)
            Conv2DOptions.AddDilationWFactor(b, 1)
            Conv2DOptions.AddDilationHFactor(b, 1)
            Conv2DOptions.AddFusedActivationFunction(b, Act.RELU)
            return Opt.Conv2DOptions, Conv2DOptions.End(b)
        if kind == Op.DEPTHWISE_CONV_2D:
            DepthwiseConv2DOptions.Start(b)
            DepthwiseConv2DOptions.AddPadding(b, Padding.SAME)
            DepthwiseConv2DOptions.AddStrideW(b, 1)
            DepthwiseConv2DOptions.AddStrideH(b, 1)
            DepthwiseConv2DOptions.AddDepthMultiplier(b, 1)
            DepthwiseConv2DOptions.AddDilationWFactor(b, 1)
            DepthwiseConv2DOptions.AddDilationHFactor(b, 1)
            return Opt.DepthwiseConv2DOptions, DepthwiseConv2DOptions.End(b)
        if kind == Op.ADD:
            AddOptions.Start(b)
            AddOptions.AddFusedActivationFunction(b, Act.RELU)
            return Opt.AddOptions, AddOptions.End(b)
        if kind == Op.MAX_POOL_2D:
            Pool2DOptions.Start(b)
            Pool2DOptions.AddPadding(b, Padding.VALID)
            for f in (
                Pool2DOptions.AddStrideW,
                Pool2DOptions.AddStrideH,
                Pool2DOptions.AddFilterWidth,
                Pool2DOptions.AddFilterHeight,
            ):
                f(b, 2)
            return Opt.Pool2DOptions, Pool2DOptions.End(b)
        if kind == Op.RESHAPE:
            nv = vector(ReshapeOptions.StartNewShapeVector, list(ACT["flat"][0]), b.PrependInt32)
            ReshapeOptions.Start(b)
            ReshapeOptions.AddNewShape(b, nv)
            return Opt.ReshapeOptions, ReshapeOptions.End(b)
        if kind == Op.FULLY_CONNECTED:
            FullyConnectedOptions.Start(b)
            return Opt.FullyConnectedOptions, FullyConnectedOptions.End(b)
        return None, None

    graph = [
        (Op.QUANTIZE, ["x"], "xq"),
        (Op.CONV_2D, ["xq", "w1", "b1"], "conv"),
        (Op.DEPTHWISE_CONV_2D, ["conv", "w2", "b2"], "dw"),
        (Op.ADD, ["conv", "dw"], "add"),
        (Op.MAX_POOL_2D, ["add"], "pool"),
        (Op.RESHAPE, ["pool", "shape"], "flat"),
        (Op.FULLY_CONNECTED, ["flat", "w3", "b3"], "fc"),
        (Op.DEQUANTIZE, ["fc"], "y"),
    ]
    if not quantized:
        graph = [
            (kind, ["x" if i == "xq" else i for i in ins], "y" if out == "fc" else out)
            for kind, ins, out in graph[1:-1]
        ]
    operators = []
    for kind, ins, out in graph:
        kind_options, opts = options(kind)
        iv = vector(Operator.StartInputsVector, [index[n] for n in ins], b.PrependInt32)
        ov = vector(Operator.StartOutputsVector, [index[out]], b.PrependInt32)
        Operator.Start(b)
        Operator.AddOpcodeIndex(b, codes.index(kind))
        Operator.AddInputs(b, iv)
        Operator.AddOutputs(b, ov)
        if opts is not None:
            Operator.AddBuiltinOptionsType(b, kind_options)
            Operator.AddBuiltinOptions(b, opts)
        operators.append(Operator.End(b))

    tv = vector(SubGraph.StartTensorsVector, tensors, b.PrependUOffsetTRelative)
    ov = vector(SubGraph.StartOperatorsVector, operators, b.PrependUOffsetTRelative)
    inv = vector(SubGraph.StartInputsVector, [index["x"]], b.PrependInt32)
    outv = vector(SubGraph.StartOutputsVector, [index["y"]], b.PrependInt32)
    SubGraph.Start(b)
    SubGraph.AddTensors(b, tv)
    SubGraph.AddInputs(b, inv)
    SubGraph.AddOutputs(b, outv)
    SubGraph.AddOperators(b, ov)
    subgraph = SubGraph.End(b)

    code_offsets = []
    for code in codes:
        OperatorCode.Start(b)
        OperatorCode.AddDeprecatedBuiltinCode(b, min(code, 127))
        OperatorCode.AddBuiltinCode(b, code)
        OperatorCode.AddVersion(b, 1)
        code_offsets.append(OperatorCode.End(b))
    buffer_offsets = []
    for data in buffers:
        dv = None if data is None else b.CreateNumpyVector(np.frombuffer(data, np.uint8))
        Buffer.Start(b)
        if dv is not None:
            Buffer.AddData(b, dv)
        buffer_offsets.append(Buffer.End(b))
    cv = vector(Model.StartOperatorCodesVector, code_offsets, b.PrependUOffsetTRelative)
    sv = vector(Model.StartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    bv = vector(Model.StartBuffersVector, buffer_offsets, b.PrependUOffsetTRelative)
    desc = b.CreateString("tvm-intq test model")
    Model.Start(b)
    Model.AddVersion(b, 3)
    Model.AddOperatorCodes(b, cv)
    Model.AddSubgraphs(b, sv)
    Model.AddDescription(b, desc)
    Model.AddBuffers(b, bv)
    b.Finish(Model.End(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def reference(x: np.ndarray) -> np.ndarray:
    """The network in numpy, ``Q(op(DQ(inputs)))`` per layer in float64 (NHWC)."""

    def q(name, r):
        _, s, z = ACT[name]
        return np.clip(np.rint(r / s) + z, -128, 127)

    def dq(name, v):
        _, s, z = ACT[name]
        return s * (v - z)

    def conv(x, w, s, bias, depthwise=False):  # SAME 3x3, stride 1; w OHWI or 1HWC
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        wr = w.astype(np.float64) * s.reshape((1, 1, 1, -1) if depthwise else (-1, 1, 1, 1))
        out = np.zeros(x.shape[:3] + (wr.shape[3] if depthwise else wr.shape[0],))
        for i in range(3):
            for j in range(3):
                patch = xp[:, i : i + x.shape[1], j : j + x.shape[2], :]
                out += patch * wr[0, i, j] if depthwise else patch @ wr[:, i, j, :].T
        return out + bias[0] * bias[1]

    xq = q("xq", x.astype(np.float64))
    c = q("conv", np.maximum(conv(dq("xq", xq), *WEIGHTS["w1"][:2], BIASES["b1"]), 0))
    d = q("dw", conv(dq("conv", c), *WEIGHTS["w2"][:2], BIASES["b2"], depthwise=True))
    a = q("add", np.maximum(dq("conv", c) + dq("dw", d), 0))
    p = a.reshape(1, 4, 2, 4, 2, C1).max(axis=(2, 4))
    f = p.reshape(1, -1)
    w3, s3, _ = WEIGHTS["w3"]
    fc = q(
        "fc",
        dq("flat", f) @ (w3.astype(np.float64) * s3[:, None]).T + BIASES["b3"][0] * BIASES["b3"][1],
    )
    return dq("fc", fc).astype(F32)
