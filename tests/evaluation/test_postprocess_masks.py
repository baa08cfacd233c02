"""Mask postprocessors on hand-worked cases (8x8 masks, 2-3 queries) and against torch's resize."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detr_jax.evaluation.postprocess import postprocess, postprocess_sigmoid
from detr_jax.evaluation.postprocess_masks import (
    masks_to_original,
    panoptic_batch,
    panoptic_segments,
    postprocess_panoptic,
    postprocess_segm,
    upsample_mask_logits,
)
from detr_jax.inference import make_predict_fn

IS_THING = (True, True, False)  # labels 0, 1 things, 2 stuff
HI, LO = 4.0, -4.0  # mask logits: probability 0.982 / 0.018


def _class_logits(*rows):
    """Softmax logits [1, Q, 4] (3 classes + no object) giving probability p to class c."""
    out = []
    for c, p in rows:
        probs = np.full(4, (1 - p) / 3)
        probs[c] = p
        out.append(np.log(probs))
    return np.asarray(out, np.float32)[None]


def _masks(*regions, hw=(8, 8)):
    """Mask logits [1, Q, H, W]: HI inside each region (a tuple of slices), LO elsewhere."""
    m = np.full((len(regions), *hw), LO, np.float32)
    for q, region in enumerate(regions):
        m[(q, *region)] = HI
    return m[None]


def _panoptic(logits, masks, pixel_mask=None, orig=None, overlap=0.8, **kw):
    b, _, h, w = masks.shape
    pixel_mask = np.ones((b, h, w), bool) if pixel_mask is None else pixel_mask
    dense = jax.jit(lambda lg, m, pm: postprocess_panoptic(
        lg, np.zeros(lg.shape[:2] + (4,), np.float32), None, 0, pred_masks=m, pixel_mask=pm,
        mask_stride=1, **kw))(logits, masks, pixel_mask)
    dense = jax.device_get(dense)
    orig = (h, w) if orig is None else orig
    return panoptic_segments({k: v[0] for k, v in dense.items()}, orig, IS_THING, overlap)


def _cols(width_ids, h=8):
    """An [h, 8] id map from per-column ids."""
    return np.tile(np.asarray(width_ids, np.int32), (h, 1))


ALL = slice(None)


def test_kept_queries_and_no_object():
    logits = _class_logits((0, 0.95), (2, 0.9), (3, 0.9))  # q2: best is "no object"
    masks = _masks((ALL, slice(0, 4)), (ALL, slice(4, 8)), (ALL, ALL))
    out = _panoptic(logits, masks)
    np.testing.assert_array_equal(out["ids"], _cols([1] * 4 + [2] * 4))
    segs = [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in out["segments"]]
    assert segs == [(1, 0, True, 32), (2, 2, False, 32)]
    assert out["segments"][0]["score"] == pytest.approx(0.95, abs=1e-6)


@pytest.mark.parametrize("overlap, want", [(0.8, [1] * 6 + [0] * 2), (0.3, [1] * 6 + [2] * 2)])
def test_score_weighted_argmax_and_overlap_threshold(overlap, want):
    # q0 (score 0.95, mask prob 0.953) covers cols 0..5, q1 (0.85, 0.982) cols 2..7: q0 wins the
    # overlap by score * prob (0.905 > 0.835; by prob alone q1 would); q1 keeps cols 6..7, 16 of
    # its 48 px (1/3): dropped at overlap 0.8 (VOID there), kept at 0.3.
    logits = _class_logits((0, 0.95), (1, 0.85))
    masks = _masks((ALL, slice(0, 6)), (ALL, slice(2, 8)))
    masks[0, 0, :, :6] = 3.0
    out = _panoptic(logits, masks, overlap=overlap)
    np.testing.assert_array_equal(out["ids"], _cols(want))


def test_ratio_at_the_threshold_is_kept():
    # q1 keeps 4 of its 5 columns: 32 / 40 = 0.8 exactly, kept (Mask2Former drops below it)
    logits = _class_logits((0, 0.95), (1, 0.85))
    masks = _masks((ALL, slice(0, 4)), (ALL, slice(3, 8)))
    np.testing.assert_array_equal(_panoptic(logits, masks)["ids"], _cols([1] * 4 + [2] * 4))


@pytest.mark.parametrize("threshold, kept", [(0.8, False), (0.7, True)])
def test_object_mask_threshold(threshold, kept):
    logits = _class_logits((0, 0.95), (1, 0.75))
    masks = _masks((ALL, slice(0, 4)), (ALL, slice(4, 8)))
    out = _panoptic(logits, masks, object_mask_threshold=threshold)
    np.testing.assert_array_equal(out["ids"], _cols([1] * 4 + ([2] if kept else [0]) * 4))


def test_stuff_of_one_class_is_merged_things_are_not():
    # rows 0..3 stuff, rows 4..5 a thing, rows 6..7 the same stuff class again; then two things
    logits = _class_logits((2, 0.9), (0, 0.95), (2, 0.97))
    masks = _masks((slice(0, 4), ALL), (slice(4, 6), ALL), (slice(6, 8), ALL))
    out = _panoptic(logits, masks)
    np.testing.assert_array_equal(out["ids"][:, 0], [1, 1, 1, 1, 2, 2, 1, 1])
    segs = [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in out["segments"]]
    assert segs == [(1, 2, False, 48), (2, 0, True, 16)]
    assert out["segments"][0]["score"] == pytest.approx(0.97, abs=1e-6)  # the best of the two
    things = _panoptic(_class_logits((1, 0.9), (1, 0.9)),
                       _masks((slice(0, 4), ALL), (slice(4, 8), ALL)))
    np.testing.assert_array_equal(things["ids"][:, 0], [1] * 4 + [2] * 4)


def test_pixels_only_won_at_low_probability_are_void():
    # one kept query, high on cols 0..3: it wins every pixel (ratio 64 / 32), paints only its own
    out = _panoptic(_class_logits((0, 0.9)), _masks((ALL, slice(0, 4))))
    np.testing.assert_array_equal(out["ids"], _cols([1] * 4 + [0] * 4))
    empty = _panoptic(_class_logits((3, 0.9)), _masks((ALL, ALL)))
    assert empty["segments"] == [] and not empty["ids"].any()


def test_crop_to_size_then_nearest_resize_to_orig():
    # real pixels rows 0..5, cols 0..3 of the 8x8 canvas; the original image is 12 x 8
    pixel_mask = np.zeros((1, 8, 8), bool)
    pixel_mask[0, :6, :4] = True
    logits = _class_logits((0, 0.95), (2, 0.9))
    masks = _masks((slice(0, 3), ALL), (slice(3, 8), ALL))
    out = _panoptic(logits, masks, pixel_mask=pixel_mask, orig=(12, 8))
    want = np.repeat(np.repeat(np.array([[1] * 4] * 3 + [[2] * 4] * 3), 2, 0), 2, 1)
    np.testing.assert_array_equal(out["ids"], want)
    assert [s["area"] for s in out["segments"]] == [48, 48]
    batch = panoptic_batch(
        jax.device_get(postprocess_panoptic(
            np.concatenate([logits] * 2), None, None, 0, pred_masks=np.concatenate([masks] * 2),
            pixel_mask=np.concatenate([pixel_mask] * 2), mask_stride=1)),
        np.array([[12, 8], [6, 4]]), IS_THING, image_valid=np.array([True, False]))
    assert batch[1] is None
    np.testing.assert_array_equal(batch[0]["ids"], want)


def test_upsample_is_torch_bilinear_then_crop():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 7)).astype(np.float32)
    got = np.asarray(upsample_mask_logits(x, (18, 26), stride=4))
    want = F.interpolate(torch.from_numpy(x), size=(20, 28), mode="bilinear",
                         align_corners=False).numpy()[:, :, :18, :26]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not cover"):
        upsample_mask_logits(x, (24, 26), stride=4)


def _segm_inputs(seed=0, b=2, q=5, c=3, sigmoid=False):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(b, q, c if sigmoid else c + 1)) * 2).astype(np.float32)
    boxes = rng.uniform(0.2, 0.6, size=(b, q, 4)).astype(np.float32)
    masks = (rng.normal(size=(b, q, 4, 5)) * 3).astype(np.float32)
    pixel_mask = np.zeros((b, 16, 20), bool)
    pixel_mask[0, :13, :20] = True
    pixel_mask[1, :16, :9] = True
    orig = np.array([[26, 40], [50, 30]], np.int32)
    return logits, boxes, orig, masks, pixel_mask


@pytest.mark.parametrize("sigmoid", [False, True])
def test_segm_detections_are_the_bbox_postprocessors(sigmoid):
    logits, boxes, orig, masks, pixel_mask = _segm_inputs(sigmoid=sigmoid)
    mode = "pairs" if sigmoid else "query"
    got = jax.device_get(postprocess_segm(
        logits, boxes, orig, 4, pred_masks=masks, pixel_mask=pixel_mask, mode=mode,
        activation="sigmoid" if sigmoid else "softmax"))
    ref = jax.device_get((postprocess_sigmoid if sigmoid else postprocess)(logits, boxes, orig, 4))
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, err_msg=k)
    np.testing.assert_array_equal(got["size"], [[13, 20], [16, 9]])
    # the masks: each detection's query, upsampled (torch), sigmoid, zero on padding
    up = F.interpolate(torch.from_numpy(masks), size=(16, 20), mode="bilinear",
                       align_corners=False).sigmoid().numpy()
    for i in range(2):
        want = up[i][got["queries"][i]] * pixel_mask[i]
        np.testing.assert_allclose(got["masks"][i], want, rtol=1e-5, atol=1e-6)


def test_segm_modes_by_hand():
    # softmax over 2 classes + no object; query 0: (0.5, 0.4, 0.1), query 1: (0.45, 0.1, 0.45)
    probs = np.array([[[0.5, 0.4, 0.1], [0.45, 0.1, 0.45]]])
    logits = np.log(probs).astype(np.float32)
    masks = np.zeros((1, 2, 2, 2), np.float32)
    args = (logits, np.full((1, 2, 4), 0.5, np.float32), np.array([[8, 8]]), 3)
    kw = dict(pred_masks=masks, pixel_mask=np.ones((1, 8, 8), bool))
    q = jax.device_get(postprocess_segm(*args, mode="query", **kw))
    np.testing.assert_array_equal(q["queries"][0], [0, 1])
    p = jax.device_get(postprocess_segm(*args, mode="pairs", **kw))
    np.testing.assert_allclose(p["scores"][0], [0.5, 0.45, 0.4], rtol=1e-5)
    np.testing.assert_array_equal(p["queries"][0], [0, 1, 0])
    np.testing.assert_array_equal(p["labels"][0], [0, 0, 1])
    sig = jax.device_get(postprocess_segm(
        np.array([[[0.0, 3.0], [2.0, -1.0]]], np.float32), *args[1:], mode="query",
        activation="sigmoid", **kw))
    np.testing.assert_array_equal(sig["queries"][0], [0, 1])
    np.testing.assert_array_equal(sig["labels"][0], [1, 0])
    with pytest.raises(ValueError, match="mode must be"):
        postprocess_segm(*args, mode="best", **kw)


def test_mask_score_multiplies_by_the_mean_probability_inside():
    # query 0: class prob 0.6, mask logit 2 on 4 px of 16 (others -2); query 1: 0.5, logit 0.5
    logits = np.log(np.array([[[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]])).astype(np.float32)
    masks = np.full((1, 2, 4, 4), -2.0, np.float32)
    masks[0, 0, :2, :2] = 2.0
    masks[0, 1] = 0.5
    out = jax.device_get(postprocess_segm(
        logits, np.full((1, 2, 4), 0.5, np.float32), np.array([[4, 4]]), 2, pred_masks=masks,
        pixel_mask=np.ones((1, 4, 4), bool), mask_stride=1, mask_score=True))
    s2, s05 = 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(-0.5))  # 0.881, 0.622
    # 0.6 * 0.881 = 0.528 > 0.5 * 0.622 = 0.311: order kept; mean over the mask (+1e-6 guard)
    np.testing.assert_allclose(out["scores"][0], [0.6 * 4 * s2 / (4 + 1e-6),
                                                  0.5 * 16 * s05 / (16 + 1e-6)], rtol=1e-5)
    # query 0's mask shrinks to one pixel at logit 0.05 (prob 0.512): 0.6 * 0.512 = 0.307 < 0.311
    masks[0, 0] = -2.0
    masks[0, 0, 0, 0] = 0.05
    out = jax.device_get(postprocess_segm(
        logits, np.full((1, 2, 4), 0.5, np.float32), np.array([[4, 4]]), 2, pred_masks=masks,
        pixel_mask=np.ones((1, 4, 4), bool), mask_stride=1, mask_score=True))
    np.testing.assert_array_equal(out["queries"][0], [1, 0])  # re-sorted by the new score
    np.testing.assert_allclose(out["masks"][0, 0], np.full((4, 4), s05), rtol=1e-6)
    np.testing.assert_allclose(out["scores"][0], [0.5 * s05, 0.6 / (1 + np.exp(-0.05))],
                               rtol=1e-5)


def test_masks_to_original_crops_resizes_and_thresholds():
    rng = np.random.default_rng(3)
    probs = rng.random((3, 16, 20)).astype(np.float32)
    got = masks_to_original(probs, (13, 9), (26, 27))
    want = F.interpolate(torch.from_numpy(probs[:, :13, :9])[None], size=(26, 27),
                         mode="bilinear", align_corners=False)[0].numpy() > 0.5
    assert got.dtype == bool and got.shape == (3, 26, 27)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(masks_to_original(probs, (13, 9), (13, 9)),
                                  probs[:, :13, :9] > 0.5)
    assert masks_to_original(probs[:0], (13, 9), (5, 6)).shape == (0, 5, 6)


class _MaskModel:
    def apply(self, variables, image, pixel_mask, train):
        return dict(variables["params"])


def test_predict_fn_runs_the_mask_postprocessors():
    logits, boxes, orig, masks, pixel_mask = _segm_inputs()
    params = {"pred_logits": logits[None], "pred_boxes": boxes[None], "pred_masks": masks[None]}
    batch = {"image": np.zeros((2, 16, 20, 3), np.float32), "pixel_mask": pixel_mask,
             "orig_size": orig}
    fn = jax.jit(make_predict_fn(_MaskModel(), top_k=3,
                                 postprocessors=("bbox", "segm", "panoptic")))
    predictions, _ = fn({"params": params}, batch)
    predictions = jax.device_get(predictions)
    want = jax.device_get(postprocess_segm(logits, boxes, orig, 3, pred_masks=masks,
                                           pixel_mask=pixel_mask))
    for k in want:
        np.testing.assert_allclose(predictions["segm"][k], want[k], rtol=1e-6, err_msg=k)
    assert predictions["panoptic"]["query_map"].shape == (2, 16, 20)
    np.testing.assert_array_equal(predictions["segm"]["queries"], predictions["bbox"]["queries"])
    no_masks = {"params": {"pred_logits": logits[None], "pred_boxes": boxes[None]}}
    with pytest.raises(ValueError, match="needs outputs\\['pred_masks'\\]"):
        make_predict_fn(_MaskModel(), top_k=3, postprocessors=("segm",))(no_masks, batch)
