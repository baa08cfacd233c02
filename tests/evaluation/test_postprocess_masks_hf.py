"""The mask postprocessors against HF transformers' Mask2FormerImageProcessor post-processing.

HF first resizes the mask logits to 384 x 384 (bilinear, align_corners=False); we give it either
96 x 96 logits (our stride-4 upsampling gives the same 384 x 384 canvas) or 384 x 384 ones (the
resize is then the identity), and no `target_sizes`, so nothing else is resized.

Where the algorithms differ (Mask2Former's own `panoptic_inference`, which ours follows, vs HF's
`compute_segments`), and how the random cases keep clear of the differences:
- HF thresholds the *score-weighted* probabilities (score * sigmoid >= 0.5) for a query's area;
  Mask2Former thresholds sigmoid >= 0.5. The cases keep every mask logit out of [-0.6, 0.6]:
  with scores > 0.8 both thresholds then agree.
- HF paints a segment on every pixel it wins; Mask2Former only where its probability is also
  >= 0.5. The cases have a kept query 0 that is high everywhere, so every pixel's winner is high.
- HF keeps a segment when area ratio > overlap threshold, Mask2Former when >= : the cases
  assert that no ratio equals the threshold.
- HF, after fusing a stuff query into an earlier segment, resets its id counter to that id, so a
  later new segment can reuse an id in use (an HF bug); and it lists a fused segment once per
  query. The fused case puts the duplicate stuff queries last and compares segment ids as sets.
Instance segmentation coincides with `mode="pairs"`, `top_k=Q`, `mask_score=True` (HF's topk is
unsorted, so detections are compared sorted by score).
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest
import torch

from detr_jax.evaluation.postprocess_masks import (
    masks_to_original,
    panoptic_segments,
    postprocess_panoptic,
    postprocess_segm,
)

transformers = pytest.importorskip("transformers")
# Without torchvision HF falls back to the PIL-backend class (with a warning); its post-processing
# is the same code as image_processing_mask2former.py's.
Mask2FormerImageProcessor = getattr(transformers, "Mask2FormerImageProcessorPil",
                                    transformers.Mask2FormerImageProcessor)

IS_THING = (True, True, False, False)  # 4 classes, logit index 4 = no object


def _hf_outputs(logits: np.ndarray, masks: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(class_queries_logits=torch.from_numpy(logits),
                           masks_queries_logits=torch.from_numpy(masks))


@pytest.mark.parametrize("seed", range(3))
def test_instance_segmentation_matches_hf(seed):
    rng = np.random.default_rng(seed)
    num_q, num_c = 6, 4
    logits = (rng.normal(size=(1, num_q, num_c + 1)) * 2).astype(np.float32)
    masks = (rng.normal(size=(1, num_q, 96, 96)) * 2).astype(np.float32)
    masks += np.linspace(-3, 3, 96, dtype=np.float32)[None, None, :, None] * rng.choice(
        [-1, 1], (1, num_q, 1, 1))  # masks of different sizes, so mask scores differ
    hf = Mask2FormerImageProcessor().post_process_instance_segmentation(
        _hf_outputs(logits, masks), threshold=0.0, return_binary_maps=True)[0]
    ours = jax.device_get(postprocess_segm(
        logits, np.zeros((1, num_q, 4), np.float32), np.array([[384, 384]]), num_q,
        pred_masks=masks, pixel_mask=np.ones((1, 384, 384), bool), mode="pairs",
        mask_score=True))
    order = np.argsort([-s["score"] for s in hf["segments_info"]], kind="stable")
    hf_scores = np.array([hf["segments_info"][j]["score"] for j in order])
    hf_labels = np.array([hf["segments_info"][j]["label_id"] for j in order])
    hf_masks = hf["segmentation"].numpy()[order].astype(bool)
    assert len(hf_scores) == num_q and np.ptp(hf_scores) > 0.05  # all kept, and they differ
    np.testing.assert_allclose(ours["scores"][0], hf_scores, rtol=1e-4, atol=1e-6)  # HF rounds
    np.testing.assert_array_equal(ours["labels"][0], hf_labels)
    binary = masks_to_original(ours["masks"][0], ours["size"][0], (384, 384))
    assert 0.05 < binary.mean() < 0.95
    flips = (binary != hf_masks).sum()
    assert flips <= 2, f"{flips} pixels differ"  # float ties at logit 0 at most


def _panoptic_case(rng, labels, hw=384):
    """Random rectangles as masks, logits kept out of [-0.6, 0.6]; query 0 high everywhere.

    Inside its rectangle a query's logit is one random value in [1.5, 5] (so overlaps go to one
    query, not pixel by pixel); query 0 is 0.7 everywhere and scores 0.85, so it loses wherever
    another kept query is high. Outside, logits are noise in [-4, -0.6].
    """
    num_q = len(labels)
    logits = np.full((1, num_q, 5), -4.0, np.float32)
    for q, lab in enumerate(labels):
        if lab is None:  # a query whose best class is "no object"
            logits[0, q, 4], logits[0, q, 0] = 3.0, 1.0
            continue
        logits[0, q, lab] = rng.uniform(2.0, 6.0) if q else -0.9  # q0 scores 0.847
    masks = -rng.uniform(0.6, 4.0, (1, num_q, hw, hw)).astype(np.float32)
    masks[0, 0] = 0.7
    for q in range(1, num_q):
        y0, x0 = rng.integers(0, hw // 2, 2)
        h, w = rng.integers(hw // 5, hw // 2, 2)
        masks[0, q, y0:y0 + h, x0:x0 + w] = rng.uniform(1.5, 5.0)
    return logits, masks


def _ours_panoptic(logits, masks, overlap=0.8):
    hw = masks.shape[-2:]
    dense = jax.device_get(postprocess_panoptic(
        logits, None, None, 0, pred_masks=masks, pixel_mask=np.ones((1, *hw), bool),
        mask_stride=1))
    one = {k: v[0] for k, v in dense.items()}
    kept = one["keep"] & (one["mask_area"] > 0)
    ratios = one["winner_area"][kept] / one["mask_area"][kept]
    assert not np.any(ratios == overlap), "a ratio at the threshold: HF and ours differ there"
    scores = one["scores"][one["keep"]]
    assert np.all(np.abs(scores - 0.8) > 1e-3)
    return panoptic_segments(one, hw, IS_THING, overlap), one


def _hf_panoptic(logits, masks, fuse):
    return Mask2FormerImageProcessor().post_process_panoptic_segmentation(
        _hf_outputs(logits, masks), threshold=0.8, overlap_mask_area_threshold=0.8,
        label_ids_to_fuse=fuse)[0]


@pytest.mark.parametrize("seed", range(3))
def test_panoptic_things_match_hf(seed):
    rng = np.random.default_rng(seed)
    labels = [0, 1, 0, None, 1, 0, 1, 0]
    logits, masks = _panoptic_case(rng, labels)
    ours, dense = _ours_panoptic(logits, masks)
    hf = _hf_panoptic(logits, masks, fuse=set())
    hf_ids = hf["segmentation"].numpy().astype(np.int32)
    assert len(ours["segments"]) >= 2 and (~dense["keep"]).sum() >= 1
    dropped = dense["keep"] & (dense["winner_area"] < 0.8 * dense["mask_area"])
    assert dropped.sum() >= 1  # the overlap threshold takes part
    np.testing.assert_array_equal(ours["ids"], hf_ids)
    assert [(s["id"], s["category_id"]) for s in ours["segments"]] == [
        (s["id"], s["label_id"]) for s in hf["segments_info"]]
    np.testing.assert_allclose([s["score"] for s in ours["segments"]],
                               [s["score"] for s in hf["segments_info"]], atol=1e-6)


def test_panoptic_stuff_fusion_matches_hf():
    rng = np.random.default_rng(7)
    # things 0, 1; the two queries of stuff class 2 come last (see the module docstring)
    labels = [3, 0, 1, 0, None, 2, 2]
    for _ in range(20):  # draw until both stuff queries make a segment
        logits, masks = _panoptic_case(rng, labels)
        ours, dense = _ours_panoptic(logits, masks)
        stuff_q = [q for q in (5, 6) if dense["painted_area"][q] and dense["winner_area"][q]
                   >= 0.8 * dense["mask_area"][q]]
        if len(stuff_q) == 2:
            break
    assert len(stuff_q) == 2
    hf = _hf_panoptic(logits, masks, fuse={2, 3})
    np.testing.assert_array_equal(ours["ids"], hf["segmentation"].numpy().astype(np.int32))
    assert {(s["id"], s["category_id"]) for s in ours["segments"]} == {
        (s["id"], s["label_id"]) for s in hf["segments_info"]}
    stuff = [s for s in ours["segments"] if s["category_id"] == 2]
    assert len(stuff) == 1 and not stuff[0]["isthing"]
    assert sum(s["label_id"] == 2 for s in hf["segments_info"]) == 2  # HF: one entry per query
