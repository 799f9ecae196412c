"""Every python example of the README runs verbatim and predicts like the float model."""

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.integration  # whole models, boards or processes

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_example_runs_and_agrees_with_float(capsys, index):
    code = python_blocks()[index]
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert "predicted digit:" in capsys.readouterr().out
    x = namespace["calib"].arrays["input"][:1]
    session = ort.InferenceSession(str(namespace["bundled"]("mnist_cnn.onnx")))
    float_logits = session.run(None, {"input": x})[0]
    assert namespace["logits"].argmax() == float_logits.argmax()
    assert namespace["logits"].dtype == np.float32
