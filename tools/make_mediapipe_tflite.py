"""Two MediaPipe vision models as float and int8 LiteRT (.tflite) files, for counting LiteRT's
XNNPACK kernels against tvm-intq on the emulated ARM core (bench/run.py --parts emulated).

Dev-time only, like make_peer_tflite.py, and in a venv of its own (ai-edge-quantizer pulls its
own ai-edge-litert 2.x)::

    python3 -m venv /tmp/aeq && /tmp/aeq/bin/pip install ai-edge-quantizer==0.10.0 scikit-image
    /tmp/aeq/bin/python tools/make_mediapipe_tflite.py

The models come from the ``mediapipe==0.10.14`` wheel (downloaded with pip, not installed):
``palm_detection_lite.tflite`` (192x192 RGB in [0, 1]) and
``face_detection_short_range.tflite`` (128x128 RGB in [-1, 1]). Others of the wheel do not
fit: ``selfie_segmentation`` uses MediaPipe's custom ``Convolution2DTransposeBias`` operator
(neither LiteRT's stock interpreter nor TVM has it), ``pose_detection`` stores its weights
sparse (``DENSIFY``), which TVM's TFLite frontend does not import.

Writes, under ``bench/models/`` (committed: the figures must not depend on this venv):

* ``<model>.tflite`` -- float32: the wheel's model with its float16 weights widened to
  float32 constants (MediaPipe ships them as float16 + ``DEQUANTIZE``; ai-edge-quantizer only
  quantizes constant weights), the operator codes written in the current schema field (these
  old models set only ``deprecated_builtin_code``, which ai-edge-quantizer does not read), and a
  ``serving_default`` signature (ai-edge-quantizer calibrates through one). The computation is
  unchanged: checked against the wheel's model on the calibration images.
* ``<model>.int8.tflite`` -- ai-edge-quantizer's static int8 recipe (int8 weights per channel,
  int8 activations, min/max) calibrated on :func:`bench.images.images` (scikit-image's
  photographs), the images tvm-intq calibrates on in bench/run.py.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "models"
sys.path.insert(0, str(ROOT / "bench"))

from images import images  # noqa: E402  (bench/images.py: numpy + scikit-image only)

WHEEL = "mediapipe==0.10.14"
#: name -> (path in the wheel, input value range, calibration images)
MODELS = {
    "palm_detection_lite": ("mediapipe/modules/palm_detection/palm_detection_lite.tflite", (0, 1)),
    "face_detection_short_range": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        (-1, 1),
    ),
}
CALIBRATION_IMAGES = 16


def wheel_file(tmp: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.11", "--platform", "manylinux_2_17_x86_64", WHEEL, "-d", tmp],
        check=True,
    )  # fmt: skip
    return next(tmp.glob("mediapipe-*.whl"))


def float32_model(data: bytes) -> bytes:
    """The module docstring's float32 rewrite of a MediaPipe .tflite."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(data, 0)
    graph = model.subgraphs[0]
    for code in model.operatorCodes:
        code.builtinCode = max(code.builtinCode, code.deprecatedBuiltinCode)
    kept = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex].builtinCode
        src = graph.tensors[op.inputs[0]]
        buffer = model.buffers[src.buffer]
        if (
            code == schema.BuiltinOperator.DEQUANTIZE
            and src.type == schema.TensorType.FLOAT16
            and buffer.data is not None
        ):
            wide = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.float16)
            new = schema.BufferT()
            new.data = np.frombuffer(wide.astype(np.float32).tobytes(), np.uint8)
            model.buffers.append(new)
            graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
            continue
        kept.append(op)
    graph.operators = kept
    # The float16 tensors are read by nothing now: drop them (ai-edge-quantizer visits every
    # tensor of the graph) and renumber the rest.
    used = sorted(
        {i for op in kept for i in (*op.inputs, *op.outputs) if i >= 0}
        | set(graph.inputs)
        | set(graph.outputs)
    )
    index = {old: new for new, old in enumerate(used)}
    for old, t in enumerate(graph.tensors):
        if old not in index:
            model.buffers[t.buffer].data = None
    graph.tensors = [graph.tensors[i] for i in used]
    for op in kept:
        op.inputs = [index[i] if i >= 0 else i for i in op.inputs]
        op.outputs = [index[i] for i in op.outputs]
    graph.inputs = [index[i] for i in graph.inputs]
    graph.outputs = [index[i] for i in graph.outputs]
    sig = schema.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0

    def tensor_map(index):
        t = schema.TensorMapT()
        t.name, t.tensorIndex = graph.tensors[index].name, index
        return t

    sig.inputs = [tensor_map(i) for i in graph.inputs]
    sig.outputs = [tensor_map(i) for i in graph.outputs]
    model.signatureDefs = [sig]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    i = interp.get_input_details()[0]
    if i["dtype"] != np.float32:
        scale, zp = i["quantization"]
        x = np.clip(np.round(x / scale) + zp, -128, 127).astype(i["dtype"])
    interp.set_tensor(i["index"], x)
    interp.invoke()
    outs = []
    for o in interp.get_output_details():
        y = interp.get_tensor(o["index"])
        if o["dtype"] != np.float32:
            scale, zp = o["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        outs.append(y)
    return outs


def main() -> int:
    from ai_edge_quantizer import quantizer, recipe

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = zipfile.ZipFile(wheel_file(tmp))
        for name, (member, value_range) in MODELS.items():
            original = tmp / f"{name}.orig.tflite"
            original.write_bytes(wheel.read(member))
            float_path, int8_path = OUT / f"{name}.tflite", OUT / f"{name}.int8.tflite"
            float_path.write_bytes(float32_model(original.read_bytes()))
            from ai_edge_litert.interpreter import Interpreter

            shape = Interpreter(model_path=str(float_path)).get_input_details()[0]["shape"]
            calib = images(tuple(shape[1:3]), CALIBRATION_IMAGES, value_range)
            for k in range(4):  # the rewrite computes what the wheel's model computes
                for a, b in zip(run(float_path, calib[k : k + 1]), run(original, calib[k : k + 1])):
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
            qt = quantizer.Quantizer(str(float_path))
            qt.load_quantization_recipe(recipe.static_wi8_ai8())
            sig = Interpreter(model_path=str(float_path)).get_signature_list()["serving_default"]
            feeds = [{sig["inputs"][0]: calib[k : k + 1]} for k in range(len(calib))]
            result = qt.calibrate({"serving_default": feeds})
            qt.quantize(result).export_model(str(int8_path), overwrite=True)
            # how far int8 lands from float on the calibration images, for the record
            err = [
                float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))
                for k in range(4)
                for a, b in zip(run(int8_path, calib[k : k + 1]), run(float_path, calib[k : k + 1]))
            ]
            print(f"{name}: wrote {float_path.name}, {int8_path.name}; int8 vs float, largest "
                  f"error relative to the output's range: {max(err):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
