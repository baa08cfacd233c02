"""Tests for detr_jax.evaluation.coco_eval."""

import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_jax.evaluation.coco_eval import (
    METRIC_NAMES,
    CocoEvaluator,
    coco_evaluate,
    coco_gt_from_samples,
    predictions_to_coco,
    write_eval_files,
)

CAT_IDS = [1, 7, 42]
NAMES = ["circle", "square", "triangle"]


def _sample(image_id, boxes, labels, hw=(200, 300), orig_size=None):
    s = {
        "image": np.zeros((*hw, 3), np.uint8),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int32).reshape(-1),
        "image_id": image_id,
    }
    if orig_size is not None:
        s["orig_size"] = np.asarray(orig_size, np.int32)
    return s


def _samples():
    return [
        _sample(1, [[10, 20, 110, 120], [150, 30, 250, 90]], [0, 2]),
        _sample(2, [[50, 50, 150, 150]], [1]),
        _sample(3, [[0, 0, 40, 60], [100, 100, 280, 190]], [2, 1]),
    ]


def _perfect_predictions(samples, k=4):
    """Post-processed-style arrays that reproduce the GT exactly (score 0.9), K padded."""
    n = len(samples)
    scores = np.zeros((n, k), np.float32)
    labels = np.zeros((n, k), np.int32)
    boxes = np.zeros((n, k, 4), np.float32)
    for i, s in enumerate(samples):
        m = len(s["labels"])
        scores[i, :m] = 0.9
        labels[i, :m] = s["labels"]
        boxes[i, :m] = s["boxes"]
    ids = np.array([s["image_id"] for s in samples])
    return ids, scores, labels, boxes


def test_gt_dict_structure_and_category_mapping():
    gt = coco_gt_from_samples(_samples(), CAT_IDS, NAMES)
    assert [c["id"] for c in gt["categories"]] == CAT_IDS
    assert [c["name"] for c in gt["categories"]] == NAMES
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    assert gt["images"][0]["height"] == 200 and gt["images"][0]["width"] == 300
    anns = gt["annotations"]
    assert [a["category_id"] for a in anns] == [1, 42, 7, 42, 7]
    assert anns[0]["bbox"] == [10.0, 20.0, 100.0, 100.0]
    assert anns[0]["area"] == 100.0 * 100.0
    assert all(a["iscrowd"] == 0 for a in anns)
    assert min(a["id"] for a in anns) >= 1
    assert len({a["id"] for a in anns}) == len(anns)


def test_gt_boxes_scaled_to_orig_size():
    # image is 50x100 (h, w), original was 100x400: x scales by 4, y by 2
    s = _sample(5, [[10, 5, 20, 25]], [0], hw=(50, 100), orig_size=(100, 400))
    gt = coco_gt_from_samples([s], CAT_IDS, NAMES)
    assert gt["images"][0] == {"id": 5, "height": 100, "width": 400}
    assert gt["annotations"][0]["bbox"] == pytest.approx([40, 10, 40, 40])
    assert gt["annotations"][0]["area"] == pytest.approx(1600)


def test_predictions_to_coco_format_and_filtering():
    ids = np.array([3, 99])
    scores = np.array([[0.8, 0.1], [0.9, 0.9]], np.float32)
    labels = np.array([[2, 1], [0, 0]], np.int32)
    boxes = np.array([[[10, 20, 30, 60], [0, 0, 1, 1]], [[0, 0, 5, 5]] * 2], np.float32)
    res = predictions_to_coco(
        ids, scores, labels, boxes, CAT_IDS, image_valid=np.array([True, False]),
        score_threshold=0.5,
    )
    assert len(res) == 1
    r = res[0]
    assert r["image_id"] == 3 and r["category_id"] == 42
    assert r["bbox"] == pytest.approx([10, 20, 20, 40])
    assert r["score"] == pytest.approx(0.8)
    assert type(r["score"]) is float and type(r["image_id"]) is int
    assert all(type(v) is float for v in r["bbox"])
    json.dumps(res)


def test_perfect_predictions_give_ap_one():
    samples = _samples()
    gt = coco_gt_from_samples(samples, CAT_IDS, NAMES)
    preds = predictions_to_coco(*_perfect_predictions(samples), CAT_IDS, score_threshold=0.5)
    metrics = coco_evaluate(gt, preds)
    assert set(metrics) == set(METRIC_NAMES)
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert metrics[k] == pytest.approx(1.0), k


def test_wrong_category_gives_zero():
    samples = _samples()
    gt = coco_gt_from_samples(samples, CAT_IDS, NAMES)
    ids, scores, labels, boxes = _perfect_predictions(samples)
    preds = predictions_to_coco(ids, scores, (labels + 1) % 3, boxes, CAT_IDS, score_threshold=0.5)
    assert coco_evaluate(gt, preds)["AP"] == pytest.approx(0.0)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def test_shifted_predictions_match_independent_ap():
    # two images, one 100x100 GT box each; image 1 predicted exactly (score 0.9),
    # image 2 shifted right by 20 px (score 0.8) -> IoU 80/120 = 0.667.
    gt_box = [50.0, 50.0, 150.0, 150.0]
    shifted = [70.0, 50.0, 170.0, 150.0]
    samples = [_sample(1, [gt_box], [0]), _sample(2, [gt_box], [0])]
    gt = coco_gt_from_samples(samples, CAT_IDS, NAMES)
    preds = predictions_to_coco(
        np.array([1, 2]), np.array([[0.9], [0.8]]), np.zeros((2, 1), np.int32),
        np.array([[gt_box], [shifted]]), CAT_IDS,
    )
    metrics = coco_evaluate(gt, preds)

    iou = _iou(gt_box, shifted)
    assert 0.65 < iou < 0.7
    thresholds = np.linspace(0.5, 0.95, 10)
    # Both detections are TPs where iou >= t: precision 1 at all recalls -> AP 1.
    # Otherwise the top-scored one is a TP (recall 0.5, precision 1) and the other a FP:
    # 101-point interpolation gives precision 1 at recall 0, 0.01, ..., 0.5 -> 51/101.
    per_t = [1.0 if iou >= t else 51 / 101 for t in thresholds]
    assert metrics["AP"] == pytest.approx(np.mean(per_t), abs=1e-9)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(51 / 101)


def test_iou_between_thresholds_ap50_one_ap75_zero():
    # single image, IoU 0.6: a TP at 0.5 but a FP (and a miss) at 0.75
    gt_box = [0.0, 0.0, 100.0, 100.0]
    pred = [25.0, 0.0, 125.0, 100.0]  # IoU 75/125 = 0.6
    gt = coco_gt_from_samples([_sample(1, [gt_box], [1])], CAT_IDS, NAMES)
    preds = predictions_to_coco(
        np.array([1]), np.array([[0.7]]), np.array([[1]]), np.array([[pred]]), CAT_IDS
    )
    metrics = coco_evaluate(gt, preds)
    assert _iou(gt_box, pred) == pytest.approx(0.6)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    # thresholds 0.5 and 0.55 hit (0.6 is borderline in float: not relied upon)
    assert 0.2 - 1e-9 <= metrics["AP"] <= 0.3 + 1e-9


def test_empty_predictions_give_zeros():
    gt = coco_gt_from_samples(_samples(), CAT_IDS, NAMES)
    metrics = coco_evaluate(gt, [])
    assert metrics == {k: 0.0 for k in METRIC_NAMES}
    ev = CocoEvaluator(gt, CAT_IDS, score_threshold=0.95)
    ev.add_batch(*_evaluator_inputs(_samples()))  # all scores 0.9 < 0.95
    assert ev.predictions == []
    assert ev.compute() == {k: 0.0 for k in METRIC_NAMES}


def _evaluator_inputs(samples):
    ids, scores, labels, boxes = _perfect_predictions(samples)
    return {"scores": scores, "labels": labels, "boxes": boxes}, {
        "image_id": ids, "image_valid": np.ones(len(ids), bool)
    }


def test_image_without_gt_and_filler_images():
    samples = _samples() + [_sample(4, np.zeros((0, 4)), [])]
    gt = coco_gt_from_samples(samples, CAT_IDS, NAMES)
    assert len(gt["images"]) == 4 and len(gt["annotations"]) == 5
    ev = CocoEvaluator(gt, CAT_IDS, score_threshold=0.5)
    ev.add_batch(*_evaluator_inputs(samples[:2]))
    # second batch: image 3, image 4 (no GT) with a low-score false positive, and a
    # filler (id 0, not in GT) that must be skipped
    ids, scores, labels, boxes = _perfect_predictions(samples[2:] + [samples[0]])
    ids[-1] = 0
    scores[1, 0] = 0.6
    boxes[1, 0] = [10, 10, 50, 50]
    ev.add_batch(
        {"scores": scores, "labels": labels, "boxes": boxes},
        {"image_id": ids, "image_valid": np.array([True, True, False])},
    )
    assert {p["image_id"] for p in ev.predictions} == {1, 2, 3, 4}
    metrics = ev.compute()
    assert metrics["AP"] == pytest.approx(1.0)  # the FP is ranked below every TP
    assert "Average Precision" in ev.summary


def test_written_files_reproduce_metrics(tmp_path):
    samples = _samples()
    gt = coco_gt_from_samples(samples, CAT_IDS, NAMES)
    ids, scores, labels, boxes = _perfect_predictions(samples)
    rng = np.random.default_rng(1)
    boxes = boxes + rng.uniform(-12, 12, size=boxes.shape).astype(np.float32)
    scores = scores * rng.uniform(0.5, 1.0, size=scores.shape).astype(np.float32)
    preds = predictions_to_coco(ids, scores, labels, boxes, CAT_IDS, score_threshold=0.1)
    metrics = coco_evaluate(gt, preds)
    assert 0.0 < metrics["AP"] < 1.0

    paths = write_eval_files(tmp_path / "eval", gt, preds, metrics, step=123)
    with open(paths["eval_results"]) as f:
        summary = json.load(f)
    assert summary["step"] == 123
    assert summary["metrics"] == metrics
    assert summary["gt_file"] == paths["ground_truth"]
    assert summary["predictions_file"] == paths["predictions"]

    coco_gt = COCO(paths["ground_truth"])
    coco_dt = coco_gt.loadRes(paths["predictions"])
    e = COCOeval(coco_gt, coco_dt, iouType="bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    assert float(e.stats[0]) == metrics["AP"]
    assert [float(v) for v in e.stats[:9]] == [metrics[k] for k in METRIC_NAMES]
