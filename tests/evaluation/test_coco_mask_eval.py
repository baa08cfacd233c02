"""COCO mask AP: RLE encoding and scoring against pycocotools run directly on the same masks."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_jax.evaluation.coco_eval import coco_evaluate
from detr_jax.evaluation.coco_mask_eval import (
    CocoMaskEvaluator,
    coco_mask_gt_from_samples,
    encode_masks,
    mask_predictions_to_coco,
)

CAT_IDS = [3, 9]
CATEGORIES = [{"id": 3, "name": "a"}, {"id": 9, "name": "b"}]
H, W = 40, 50
POLY = [[5.0, 5.0, 30.0, 5.0, 30.0, 25.0, 5.0, 25.0]]  # a 25 x 20 rectangle


def _box_mask(y0, y1, x0, x1, hw=(H, W)):
    m = np.zeros(hw, bool)
    m[y0:y1, x0:x1] = True
    return m


def _gt():
    """Image 1: a polygon annotation (category 3); image 2: an RLE one (category 9)."""
    rle = mask_util.encode(np.asfortranarray(_box_mask(10, 30, 10, 40).astype(np.uint8)))
    rle = dict(rle, counts=rle["counts"].decode())
    return {
        "images": [{"id": 1, "height": H, "width": W}, {"id": 2, "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "segmentation": POLY, "area": 500.0,
             "bbox": [5, 5, 25, 20], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 9, "segmentation": rle, "area": 600.0,
             "bbox": [10, 10, 30, 20], "iscrowd": 0},
        ],
        "categories": CATEGORIES,
    }


def _poly_mask():
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(POLY, H, W))).astype(bool)


def test_encode_is_json_safe_and_decodes_back():
    masks = np.stack([_box_mask(0, 3, 1, 4), np.zeros((H, W), bool), _poly_mask()])
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [H, W] for r in rles)
    json.dumps(rles)
    for r, m in zip(rles, masks, strict=True):
        np.testing.assert_array_equal(mask_util.decode(r).astype(bool), m)
    assert encode_masks(np.zeros((0, H, W), bool)) == []


def test_perfect_masks_give_ap_one():
    preds = mask_predictions_to_coco(1, [0.9], [0], _poly_mask()[None], CAT_IDS)
    preds += mask_predictions_to_coco(2, [0.8, 0.01], [1, 1],
                                      np.stack([_box_mask(10, 30, 10, 40)] * 2), CAT_IDS,
                                      score_threshold=0.1)
    assert len(preds) == 2 and preds[1]["category_id"] == 9
    metrics = coco_evaluate(_gt(), preds, iou_type="segm")
    for k in ("AP", "AP50", "AP75", "AR100"):
        assert metrics[k] == pytest.approx(1.0), k


def _pycocotools_segm(gt, results):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_shifted_mask_matches_pycocotools_and_the_hand_ap():
    gt = _gt()
    exact = _box_mask(10, 30, 10, 40)
    shifted = _box_mask(10, 30, 16, 46)  # 6 px right: IoU 24 / 36
    gt["annotations"][0]["category_id"] = 9  # both images' instances in one category
    gt["annotations"][0]["segmentation"] = encode_masks(exact[None])[0]
    preds = (mask_predictions_to_coco(1, [0.9], [1], exact[None], CAT_IDS)
             + mask_predictions_to_coco(2, [0.8], [1], shifted[None], CAT_IDS))
    ours = coco_evaluate(gt, preds, iou_type="segm")
    # the same detections built by hand with pycocotools
    results = []
    for image_id, m, s in ((1, exact, 0.9), (2, shifted, 0.8)):
        rle = mask_util.encode(np.asfortranarray(m[:, :, None].astype(np.uint8)))[0]
        results.append({"image_id": image_id, "category_id": 9, "score": s,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"]}})
    stats = _pycocotools_segm(gt, results)
    np.testing.assert_allclose([ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl",
                                                  "AR1", "AR10", "AR100")], stats[:9])
    iou = 24 / 36
    per_t = [1.0 if iou >= t else 51 / 101 for t in np.linspace(0.5, 0.95, 10)]
    assert ours["AP"] == pytest.approx(np.mean(per_t), abs=1e-9)
    assert ours["AP75"] == pytest.approx(51 / 101)


def test_evaluator_crops_and_resizes_canvas_probabilities():
    # the segm postprocessor's output: canvas 16 x 16, real pixels 8 x 8, original 16 x 16
    probs = np.zeros((1, 2, 16, 16), np.float32)
    probs[0, 0, 2:6, 1:5] = 0.9   # -> original rows 4..11, cols 2..9
    probs[0, 1, 8:, 8:] = 0.9     # padding only: an empty mask
    post = {"scores": np.array([[0.9, 0.7]]), "labels": np.array([[0, 1]]), "masks": probs,
            "size": np.array([[8, 8]])}
    gt_mask = _box_mask(4, 12, 2, 10, hw=(16, 16))
    gt = {"images": [{"id": 5, "height": 16, "width": 16}],
          "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "iscrowd": 0,
                           "segmentation": encode_masks(gt_mask[None])[0], "area": 64.0,
                           "bbox": [2, 4, 8, 8]}],
          "categories": CATEGORIES}
    ev = CocoMaskEvaluator(gt, CAT_IDS)
    ev.add_batch(post, {"image_id": np.array([5]), "orig_size": np.array([[16, 16]])})
    assert len(ev.predictions) == 2
    np.testing.assert_array_equal(mask_util.decode(ev.predictions[0]["segmentation"]), gt_mask)
    assert not mask_util.decode(ev.predictions[1]["segmentation"]).any()
    assert ev.compute()["AP"] == pytest.approx(1.0)
    ev.reset()
    ev.add_batch(post, {"image_id": np.array([5]), "orig_size": np.array([[16, 16]]),
                        "image_valid": np.array([False])})
    assert ev.predictions == []


def test_gt_from_samples_has_rles_at_the_original_size():
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 1:4, 2:6] = True
    masks[1, 5:10, 0:3] = True
    sample = {"image": np.zeros((10, 12, 3), np.uint8), "boxes": np.array(
        [[2, 1, 6, 4], [0, 5, 3, 10]], np.float32), "labels": np.array([1, 0]),
        "image_id": 3, "masks": masks, "orig_size": np.array([20, 24])}
    gt = coco_mask_gt_from_samples([sample], CAT_IDS, ["a", "b"])
    anns = gt["annotations"]
    assert [a["category_id"] for a in anns] == [9, 3]
    big = masks.repeat(2, axis=1).repeat(2, axis=2)
    for a, m in zip(anns, big, strict=True):
        np.testing.assert_array_equal(mask_util.decode(a["segmentation"]).astype(bool), m)
        assert a["area"] == m.sum()
    with pytest.raises(ValueError, match="no 'masks'"):
        coco_mask_gt_from_samples([{k: v for k, v in sample.items() if k != "masks"}],
                                  CAT_IDS, ["a", "b"])


def test_segm_needs_segmentations():
    gt = _gt()
    del gt["annotations"][0]["segmentation"]
    with pytest.raises(ValueError, match="no 'segmentation'"):
        coco_evaluate(gt, [{"image_id": 1, "category_id": 3, "score": 1.0,
                            "segmentation": encode_masks(_poly_mask()[None])[0]}], "segm")
    with pytest.raises(ValueError, match="iou_type must be"):
        coco_evaluate(_gt(), [], iou_type="mask")
