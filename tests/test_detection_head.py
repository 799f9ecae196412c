"""A YOLO-style detection head (``detection_models.py``): box coordinates of 0-320 pixels
concatenated with class probabilities of 0-1 into one output.

One scale for that output leaves the class part a few int8 steps (about 0 dB: every detection
lost) while the output's SQNR reads healthy, because the boxes dominate it. The concat on the
way to the output keeps each part's own scale (its output tail), the report measures every
part, and the whole head stays integer: the C2f split, the anchor decoding
(``(anchors -+ d) * stride``, one requantize per element) and both sigmoids."""

from __future__ import annotations

import detection_models
import numpy as np
import onnx
import pytest
from tvm import relax

from tvm_intq import api
from tvm_intq.calibration import SampleSet
from tvm_intq.core import intmath, metrics
from tvm_intq.relay_passes import analyze
from tvm_intq.relay_passes.analysis.output_parts import output_parts

pytestmark = pytest.mark.integration  # a whole model


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("head") / "yolo_head.onnx"
    onnx.save(detection_models.yolo_head(), path)
    calib = SampleSet({"images": detection_models.images(24)})
    held = SampleSet({"images": detection_models.images(8, seed=2)})
    config = api.QuantConfig(progress=False)
    return api.compile_onnx(path, calib, config, eval_samples=held)


def test_class_part_keeps_its_own_scale(compiled):
    report = compiled.report
    (out,) = report["outputs"]
    parts = {p["name"]: p["sqnr_db"] for p in out["parts"]}
    assert len(parts) == 2
    assert report["worst_part"]["sqnr_db"] >= 20.0, report["outputs"]
    assert min(parts.values()) >= 20.0
    assert not report.get("float_layers")  # no layer kept in float for it
    assert report["integer_only"], report["float_ops"]


def test_one_scale_for_the_whole_output_loses_the_classes(compiled):
    """What the class part would be with the output's one scale: the output's SQNR hides it."""
    from tvm_intq.compiler.runner import Runner
    from tvm_intq.compiler.steps import build

    x = detection_models.images(8, seed=2)
    runner = Runner(build(compiled.prepared), ["images"])
    y = np.concatenate([runner({"images": x[i : i + 1]})[0] for i in range(len(x))])
    p = intmath.activation_qparams(y.min(), y.max())
    yq = p.dequantize(p.quantize(y))
    assert metrics.sqnr_db(y, yq) > 30.0  # the whole output looks fine
    assert metrics.sqnr_db(y[:, 4:], yq[:, 4:]) < 10.0  # its class part is gone


def test_output_tail_is_the_last_concat_only(compiled):
    plan = analyze(compiled.prepared["main"])
    tails = [v.name for v, n in plan.nodes.items() if n.role == "tail"]
    assert len(tails) == 1  # output0's concat; the concats inside the head stay int8
    assert all(op != "relax.concat" for op in _float_ops_names(compiled.integer))


def _float_ops_names(mod):
    from tvm_intq.relay_passes import float_ops

    return [s.split(" = ")[1] for s in float_ops(mod)]


def test_output_parts_follow_data_movement():
    """The labels of a concat carried through a reshape and a transpose to the output."""
    a = relax.Var("a", relax.TensorType((1, 2, 3), "float32"))
    b = relax.Var("b", relax.TensorType((1, 1, 3), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [a, b]):
        with bb.dataflow():
            cat = bb.emit(relax.op.concat([a, b], axis=1), "cat")
            t = bb.emit(relax.op.permute_dims(cat, [0, 2, 1]), "t")
            out = bb.emit_output(bb.emit(relax.op.reshape(t, (1, 9)), "r"))
        bb.emit_func_output(out)
    (parts,) = output_parts(bb.get()["main"])
    assert parts.names == ["a", "b"]
    np.testing.assert_array_equal(parts.labels, [[0, 0, 1] * 3])
    masks = parts.masks((4, 9))  # four samples stacked
    assert masks[1].sum() == 4 * 3


def test_worst_part_names_output_and_part():
    ref = [np.array([[100.0, 200.0, 0.5, 0.7]]), np.array([1.0, 2.0])]
    out = [np.array([[100.0, 200.0, 0.0, 1.0]]), np.array([1.0, 2.01])]
    mask = np.array([[True, True, False, False]])
    errors = metrics.output_errors(ref, out, [[("boxes", mask), ("scores", ~mask)], None])
    assert errors[0]["sqnr_db"] > 20 and errors[0]["parts"][1]["sqnr_db"] < 10
    assert metrics.worst_part(errors) == {
        "output": "output 0",
        "part": "scores",
        "sqnr_db": errors[0]["parts"][1]["sqnr_db"],
    }
