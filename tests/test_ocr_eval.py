"""The accuracy table's parts (eval/): metrics on hand-made cases, the renderer's determinism,
and one real model of the table (rapidocr's PP-OCR direction classifier) quantized end to
end: integer-only, and its top-1 on rendered lines close to float."""

from __future__ import annotations

import numpy as np
import pytest

from eval import methods, ocr_data, ocr_models
from eval.tasks import load_task

pytestmark = pytest.mark.integration  # whole models, boards or processes


def box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def test_edit_distance_and_char_accuracy():
    assert ocr_models.edit_distance("kitten", "sitting") == 3
    assert ocr_models.edit_distance("", "abc") == 3
    assert ocr_models.edit_distance("abc", "abc") == 0
    # 1 error over 4 + 2 = 6 characters of ground truth
    assert ocr_models.char_accuracy(["abcx", "de"], ["abcd", "de"]) == pytest.approx(5 / 6)
    # much longer predictions cannot go below 0
    assert ocr_models.char_accuracy(["abcdefgh"], ["a"]) == 0.0


def test_box_iou_and_precision_recall():
    assert ocr_models.box_iou(box(0, 0, 10, 10), box(0, 0, 10, 10)) == pytest.approx(1.0)
    assert ocr_models.box_iou(box(0, 0, 10, 10), box(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert ocr_models.box_iou(box(0, 0, 1, 1), box(2, 2, 3, 3)) == 0.0
    truth = [[box(0, 0, 10, 10), box(20, 0, 30, 10)], [box(0, 0, 10, 10)]]
    preds = [
        [
            box(0, 0, 10, 9),  # IoU 0.9: a match
            box(0, 0, 10, 10),  # a second match of the same box: a false positive
            box(25, 0, 35, 10),
        ],  # IoU 1/3: no match
        [],
    ]
    assert ocr_models.match_boxes(preds, truth) == (1, 3, 3)
    m = ocr_models.precision_recall(preds, truth)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)


def test_renderer_is_deterministic():
    a_img, a_txt = ocr_data.render_lines(4, seed=7)
    b_img, b_txt = ocr_data.render_lines(4, seed=7)
    assert a_txt == b_txt and all(np.array_equal(a, b) for a, b in zip(a_img, b_img))
    _, other = ocr_data.render_lines(4, seed=8)
    assert other != a_txt
    pages, boxes = ocr_data.render_pages(2, seed=7)
    pages2, boxes2 = ocr_data.render_pages(2, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(pages + boxes, pages2 + boxes2))
    for page, bx in zip(pages, boxes):
        assert page.shape == (ocr_data.PAGE, ocr_data.PAGE, 3) and len(bx) >= 3
        assert bx.min() >= 0 and bx.max() <= ocr_data.PAGE
    assert set("".join(a_txt)) <= ocr_models.rec_charset()  # rec can read every character


@pytest.mark.integration
def test_cls_model_int8_close_to_float(tmp_path):
    """rapidocr's direction classifier, prepared (Constants -> initializers, opset 13, BN
    folded) and quantized with 16 rendered lines: integer only, and on 64 other lines its
    top-1 is within 3.2 points (2 lines) of float's."""
    task = load_task("cls", sizes=(16, 64))
    ref = methods.float_outputs(task)
    tvm = methods.TvmIntq(
        task, methods.float_outputs(task, "calib"), progress=False, columns=["percentile"]
    )
    out, facts = tvm.column("percentile")
    assert facts["integer_only"]
    float_top1, int8_top1 = task.score(ref)["top1"], task.score(out)["top1"]
    assert float_top1 >= 95.0
    assert int8_top1 >= float_top1 - 3.2


def test_the_table_says_what_auto_kept_and_its_integer_figures():
    from tvm_intq.reports.accuracy import accuracy_markdown

    checked = {"auto": 19.5, "uniform": {"symmetric": 18.0, "hybrid-asym": 21.0, "pow2": 10.0}}
    auto = {"top1": 89.0, "sqnr_db": 20.0, "schemes": {"hybrid-asym": 3}}
    row = {
        "model": "m",
        "metric": "top1",
        "file": "m.onnx",
        "data": {"calib": "c", "eval": "e"},
        "columns": {
            "float": {"top1": 90.0, "sqnr_db": 999.0},
            "auto": dict(auto, kept="hybrid-asym", checked_sqnr_db=checked),
        },
    }
    text = accuracy_markdown({"rows": [row], "command": "make eval"})
    assert (
        "- auto: hybrid-asym x3 (kept: hybrid-asym; worst-part SQNR as integers on calibration "
        "samples the search did not use: descent's choice 19.5 dB, symmetric 18.0 dB, "
        "hybrid-asym 21.0 dB, pow2 10.0 dB)"
    ) in text
    row["columns"]["auto"] = auto  # a row from before the check
    assert "- auto: hybrid-asym x3\n" in accuracy_markdown({"rows": [row], "command": "x"})
