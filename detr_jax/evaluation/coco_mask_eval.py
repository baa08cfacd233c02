"""COCO mask AP (pycocotools ``iouType="segm"``) of instance-mask predictions.

Masks are binary [K, H, W] of the *original* image (``postprocess_masks.masks_to_original`` of
the ``segm`` postprocessor's canvas probabilities), encoded as COCO compressed RLE
(``pycocotools.mask.encode``) with ``counts`` as ``str`` so that results are JSON-safe. Results
carry no ``bbox``: pycocotools then takes each detection's area (small / medium / large) from its
mask. Scoring goes through :func:`detr_jax.evaluation.coco_eval.coco_evaluate` with
``iou_type="segm"``; the ground truth's annotations need ``segmentation`` (polygons or RLE), as
official COCO files have and :func:`coco_mask_gt_from_samples` builds from samples' ``masks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

from detr_jax.evaluation.coco_eval import CocoEvaluator, coco_gt_from_samples
from detr_jax.evaluation.mask_resize import resize_nearest
from detr_jax.evaluation.postprocess_masks import masks_to_original


def encode_masks(masks: np.ndarray) -> list[dict]:
    """bool [K, H, W] -> K COCO RLEs ``{"size": [H, W], "counts": str}``."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected [K, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")}
            for r in rles]


def mask_predictions_to_coco(
    image_id: int,
    scores: np.ndarray,
    labels: np.ndarray,
    masks: np.ndarray,
    category_ids: Sequence[int],
    score_threshold: float = 0.0,
) -> list[dict]:
    """One image's instance masks in the COCO results format.

    Args:
      image_id: the image's id.
      scores: float [K].
      labels: int [K], contiguous labels (index into ``category_ids``).
      masks: bool [K, H0, W0] of the original image.
      category_ids: original category id of each contiguous label.
      score_threshold: detections with ``score < score_threshold`` are dropped.

    Returns:
      ``[{"image_id", "category_id", "segmentation": RLE, "score"}]`` with Python types.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    masks = np.asarray(masks)
    if labels.shape != scores.shape or masks.ndim != 3 or masks.shape[0] != scores.shape[0]:
        raise ValueError(f"shape mismatch: scores {scores.shape}, labels {labels.shape}, "
                         f"masks {masks.shape} (want [K], [K], [K, H, W])")
    if labels.size and (labels.min() < 0 or labels.max() >= len(category_ids)):
        raise ValueError("labels out of range of category_ids")
    keep = np.flatnonzero(scores >= score_threshold)
    rles = encode_masks(masks[keep].astype(bool))
    return [{"image_id": int(image_id), "category_id": int(category_ids[labels[j]]),
             "segmentation": rle, "score": float(scores[j])} for j, rle in zip(keep, rles,
                                                                              strict=True)]


def coco_mask_gt_from_samples(
    samples: Iterable[Mapping[str, Any]],
    category_ids: Sequence[int],
    class_names: Sequence[str],
) -> dict:
    """:func:`coco_eval.coco_gt_from_samples` plus each instance's ``segmentation`` RLE.

    Each sample needs ``masks`` bool [N, H, W] aligned with its ``boxes`` (docs/interfaces.md);
    masks of an image whose size differs from ``orig_size`` are resized (nearest) to it. The
    annotation ``area`` is the RLE's pixel count at the original size.
    """
    samples = list(samples)
    gt = coco_gt_from_samples(samples, category_ids, class_names)
    annotations = iter(gt["annotations"])
    for sample, image in zip(samples, gt["images"], strict=True):
        if "masks" not in sample:
            raise ValueError(f"image {image['id']}: sample has no 'masks'")
        masks = np.asarray(sample["masks"]).astype(bool)
        if masks.shape[0] != len(np.asarray(sample["labels"]).reshape(-1)):
            raise ValueError(f"image {image['id']}: {masks.shape[0]} masks for "
                             f"{len(sample['labels'])} labels")
        orig = (image["height"], image["width"])
        if masks.shape[0] and masks.shape[1:] != orig:
            masks = resize_nearest(masks, orig)
        for rle in encode_masks(masks):
            ann = next(annotations)
            ann["segmentation"] = rle
            ann["area"] = float(mask_util.area(rle))
    return gt


class CocoMaskEvaluator(CocoEvaluator):
    """Accumulates ``segm`` postprocessor batches and computes COCO mask AP.

    Usage::

        ev = CocoMaskEvaluator(gt, category_ids)  # gt annotations with "segmentation"
        for batch in eval_batches:
            ev.add_batch(jax.device_get(predictions["segm"]), batch)
        metrics = ev.compute()  # METRIC_NAMES of the segm task
    """

    iou_type = "segm"

    def __init__(
        self,
        gt: dict,
        category_ids: Sequence[int],
        score_threshold: float = 0.0,
        mask_threshold: float = 0.5,
    ) -> None:
        super().__init__(gt, category_ids, score_threshold)
        self.mask_threshold = mask_threshold

    def add_batch(self, post: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Add one batch.

        Args:
          post: the ``segm`` postprocessor's output on the host: ``scores`` [B, K], ``labels``
            [B, K], ``masks`` [B, K, H, W] canvas probabilities, ``size`` [B, 2] (h, w).
          batch: ``image_id`` [B], ``orig_size`` [B, 2] (h, w); optional ``image_valid`` [B].
        """
        scores, labels = np.asarray(post["scores"]), np.asarray(post["labels"])
        masks, size = post["masks"], np.asarray(post["size"])
        image_ids = np.asarray(batch["image_id"]).reshape(-1)
        orig_size = np.asarray(batch["orig_size"]).reshape(-1, 2)
        valid = batch.get("image_valid")
        valid = np.ones(len(image_ids), bool) if valid is None else np.asarray(valid, bool)
        for i in np.flatnonzero(valid):
            keep = np.flatnonzero(scores[i] >= self.score_threshold)
            binary = masks_to_original(np.asarray(masks[i])[keep], size[i], orig_size[i],
                                       self.mask_threshold)
            self._predictions.extend(mask_predictions_to_coco(
                int(image_ids[i]), scores[i][keep], labels[i][keep], binary,
                self.category_ids))
