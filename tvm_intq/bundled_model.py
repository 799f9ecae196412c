"""The bundled model's PyTorch definition (the ``qat`` extra: torch).

``tools/make_bundled_model.py`` trains :class:`MnistCnn` and exports it as
``tvm_intq/data/mnist_cnn.onnx``; :func:`bundled_model` loads the weights of that ONNX file
back into the definition (the initializers carry the ``state_dict`` names), so the very model
the ONNX file holds is also a ``torch.nn.Module``: the PyTorch frontend's tests and README
example compile it both ways (:mod:`tvm_intq.frontends.torch`).

It sits beside :mod:`tvm_intq.demo`, which runs the same model from its ONNX file, and not in
``tools/`` (not installed: the README and tests import it) nor in ``frontends/`` or ``data/``
(a network definition is neither an importer nor an asset). A module of its own so that
importing it loads torch and onnx only: the training script reads it without loading TVM.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import nn

from tvm_intq.errors import IntqError


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class Residual(nn.Module):
    """Depthwise 3x3 + BN + Hardswish, pointwise 1x1 + BN, added to the input."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(ch, ch, 3, groups=ch), nn.Hardswish(), *conv_bn(ch, ch, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MnistCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 24, 3), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.res = Residual(24)
        self.branch_a = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1), nn.Tanh())
        self.branch_b = nn.Sequential(nn.Conv2d(24, 16, 1), nn.LeakyReLU(0.1))
        self.down = nn.Sequential(*conv_bn(32, 64, 3, stride=2), nn.ReLU6())
        self.expand = nn.Sequential(*conv_bn(64, 96, 1), nn.SiLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res(self.pool(self.stem(x)))
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.expand(self.down(x))
        return self.fc(self.flatten(self.gap(x)))


def bundled_model(path: str | Path | None = None) -> MnistCnn:
    """:class:`MnistCnn` in eval mode holding the weights of the bundled ONNX file (or of
    ``path``, another export of it)."""
    path = path or resources.files("tvm_intq") / "data" / "mnist_cnn.onnx"
    model = MnistCnn()
    weights = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy())
        for t in onnx.load(str(path)).graph.initializer
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # BatchNorm's step counter is training state the ONNX file has no use for.
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise IntqError(
            f"{path}: weights do not fit MnistCnn (missing {missing}, unexpected {unexpected})"
        )
    return model.eval()
