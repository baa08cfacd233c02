"""COCO-style bbox evaluation with pycocotools.

Box conventions:
- samples (ground truth) carry ``boxes`` as xyxy pixels of their own ``image``;
- detections (from :func:`detr_jax.evaluation.postprocess.postprocess`) are xyxy pixels
  of the original image (``orig_size``);
- everything written in COCO format uses ``[x, y, w, h]`` pixels of the original image.

Labels inside the package are contiguous (0..C-1); COCO files use the dataset's original
category ids, ``category_ids[label]`` (they may be non-contiguous, e.g. COCO's 1..90).

Note on areas: the ground-truth dicts built here set ``area = w * h`` of the box. The
synthetic dataset's instance masks have a smaller area, and official COCO annotations
store the *segmentation* area, which is what decides the small/medium/large split
(APs/APm/APl). Official COCO numbers therefore need the official annotation file, not a
dict rebuilt from samples; AP/AP50/AP75 agree, APs/APm/APl (and ARs) may differ.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_jax.core import fileio

METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
)
"""Names of ``COCOeval.stats[:9]`` for the bbox and segm tasks, in order."""
IOU_TYPES = ("bbox", "segm")

_log = logging.getLogger(__name__)


def coco_gt_from_samples(
    samples: Iterable[Mapping[str, Any]],
    category_ids: Sequence[int],
    class_names: Sequence[str],
) -> dict:
    """Build a COCO ground-truth dict from per-image samples.

    Args:
      samples: per-image dicts as in ``docs/interfaces.md``: ``boxes`` float [N, 4] xyxy
        pixels of ``image`` (uint8 [H, W, 3]), ``labels`` int [N] contiguous,
        ``image_id`` int and optional ``orig_size`` (h, w). If (H, W) differs from
        ``orig_size`` the boxes are scaled to ``orig_size``. Without ``image`` the boxes
        are taken to be in ``orig_size`` pixels already.
      category_ids: original category id of each contiguous label.
      class_names: name of each contiguous label.

    Returns:
      ``{"info", "licenses", "images", "annotations", "categories"}``; annotations have
      ``bbox`` [x, y, w, h] in original-image pixels, ``area`` the instance-mask area when
      the sample has ``masks`` [N, H, W], else ``w * h`` (box area, see the module
      docstring), ``iscrowd = 0`` and ids starting at 1. Images without boxes are kept
      (they only contribute false positives).
    """
    if len(category_ids) != len(class_names):
        raise ValueError("category_ids and class_names must have the same length")
    categories = [
        {"id": int(cid), "name": str(name), "supercategory": ""}
        for cid, name in zip(category_ids, class_names, strict=True)
    ]
    images: list[dict] = []
    annotations: list[dict] = []
    seen: set[int] = set()
    for sample in samples:
        image_id = int(sample["image_id"])
        if image_id in seen:
            raise ValueError(f"duplicate image_id {image_id}")
        seen.add(image_id)
        if "image" in sample:
            img_h, img_w = (int(v) for v in np.shape(sample["image"])[:2])
        else:
            img_h = img_w = None
        if sample.get("orig_size") is not None:
            orig_h, orig_w = (int(v) for v in np.asarray(sample["orig_size"]).reshape(2))
        elif img_h is not None:
            orig_h, orig_w = img_h, img_w
        else:
            raise ValueError(f"image {image_id}: need 'image' or 'orig_size'")
        images.append({"id": image_id, "height": orig_h, "width": orig_w})

        boxes = np.asarray(sample["boxes"], dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(sample["labels"], dtype=np.int64).reshape(-1)
        if img_h is not None and (img_h, img_w) != (orig_h, orig_w):
            boxes = boxes * np.array([orig_w / img_w, orig_h / img_h] * 2)
        masks = sample.get("masks")
        pixel_area = 1.0 if img_h is None else (orig_h / img_h) * (orig_w / img_w)
        for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
            x0, y0, x1, y1 = (float(v) for v in box)
            w, h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
            # COCO's area is the segmentation area where an instance mask exists.
            area = w * h if masks is None else float(np.sum(masks[i])) * pixel_area
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools treats id 0 as "no match"
                    "image_id": image_id,
                    "category_id": int(category_ids[int(label)]),
                    "bbox": [x0, y0, w, h],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "detr_jax ground truth built from samples"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def predictions_to_coco(
    image_ids: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    boxes: np.ndarray,
    category_ids: Sequence[int],
    image_valid: np.ndarray | None = None,
    score_threshold: float = 0.0,
) -> list[dict]:
    """Convert post-processed detections to the COCO results format.

    Args:
      image_ids: int [N].
      scores: float [N, K].
      labels: int [N, K], contiguous labels (index into ``category_ids``).
      boxes: float [N, K, 4], xyxy pixels of the original image.
      category_ids: original category id of each contiguous label.
      image_valid: optional bool [N]; False rows (batch fillers) are skipped.
      score_threshold: detections with ``score < score_threshold`` are dropped.

    Returns:
      list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with python
      ints/floats.
    """
    image_ids = np.asarray(image_ids).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    boxes = np.asarray(boxes, dtype=np.float64)
    n = image_ids.shape[0]
    if scores.shape[0] != n or labels.shape != scores.shape or boxes.shape != scores.shape + (4,):
        raise ValueError(
            f"shape mismatch: image_ids {image_ids.shape}, scores {scores.shape}, "
            f"labels {labels.shape}, boxes {boxes.shape}"
        )
    valid = np.ones(n, bool) if image_valid is None else np.asarray(image_valid, bool).reshape(n)
    cat_map = np.asarray(category_ids, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= len(cat_map)):
        raise ValueError("labels out of range of category_ids")
    xywh = np.concatenate([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], axis=-1)

    results: list[dict] = []
    for i in np.flatnonzero(valid):
        keep = np.flatnonzero(scores[i] >= score_threshold)
        img_id = int(image_ids[i])
        for j in keep:
            results.append(
                {
                    "image_id": img_id,
                    "category_id": int(cat_map[labels[i, j]]),
                    "bbox": [float(v) for v in xywh[i, j]],
                    "score": float(scores[i, j]),
                }
            )
    return results


def _coco_from_dict(gt: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_evaluate_with_log(
    gt: dict, predictions: list[dict], iou_type: str = "bbox"
) -> tuple[dict[str, float], str]:
    """Like :func:`coco_evaluate`, also returning pycocotools' printed summary text."""
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if iou_type == "segm":
        bad = [a.get("id") for a in gt.get("annotations", []) if "segmentation" not in a]
        if bad:
            raise ValueError(f"iou_type='segm': ground-truth annotations {bad[:5]} have no "
                             "'segmentation' (polygons or RLE)")
        if any("segmentation" not in p for p in predictions):
            raise ValueError("iou_type='segm': every prediction needs a 'segmentation' RLE")
    if not predictions or not gt.get("images"):
        return {k: 0.0 for k in METRIC_NAMES}, "no predictions: all metrics set to 0"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_gt = _coco_from_dict(gt)
        # loadRes mutates its input (adds area/id/segmentation): give it a copy. For segm it takes
        # the area (small/medium/large) from the mask only when the results have no "bbox".
        dets = copy.deepcopy(predictions)
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox", None)
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {k: float(v) for k, v in zip(METRIC_NAMES, evaluator.stats[:9], strict=True)}
    return metrics, out.getvalue()


def coco_evaluate(gt: dict, predictions: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """COCO bbox (or mask) metrics of ``predictions`` against the ground-truth dict ``gt``.

    Args:
      gt: COCO ground-truth dict (e.g. from :func:`coco_gt_from_samples` or a loaded
        official annotation file); ``iou_type="segm"`` needs a ``segmentation`` (polygons or
        RLE) in every annotation.
      predictions: COCO results list (:func:`predictions_to_coco`, or
        ``coco_mask_eval.mask_predictions_to_coco`` with RLE ``segmentation``); not modified.
      iou_type: ``"bbox"`` or ``"segm"`` (pycocotools' ``iouType``).

    Returns:
      ``{AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100}`` as floats (``COCOeval.stats``).
      All zeros for an empty prediction list. As in pycocotools, a metric is -1.0 when it
      is undefined (no ground truth in that area range). Only the 100 best detections per
      image are used (pycocotools' ``maxDets``).
    """
    metrics, text = coco_evaluate_with_log(gt, predictions, iou_type)
    _log.debug("COCO %s eval summary:\n%s", iou_type, text)
    return metrics


def write_eval_files(
    workdir: str | os.PathLike,
    gt: dict,
    predictions: list[dict],
    metrics: Mapping[str, float],
    step: int,
) -> dict[str, str]:
    """Write ``eval_results.json``, ``predictions.json`` and ``ground_truth.json``.

    ``eval_results.json`` (indented) holds ``{"step", "metrics", "gt_file",
    "predictions_file"}``; the two large files are compact json that ``pycocotools``
    loads directly (``COCO(gt_file).loadRes(predictions_file)``). Existing files are
    overwritten.

    Returns:
      ``{"eval_results": path, "predictions": path, "ground_truth": path}``.
    """
    fileio.makedirs(workdir)
    paths = {
        "eval_results": os.path.join(workdir, "eval_results.json"),
        "predictions": os.path.join(workdir, "predictions.json"),
        "ground_truth": os.path.join(workdir, "ground_truth.json"),
    }
    with fileio.open_file(paths["ground_truth"], "w") as f:
        json.dump(gt, f)
    with fileio.open_file(paths["predictions"], "w") as f:
        json.dump(predictions, f)
    summary = {
        "step": int(step),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "gt_file": paths["ground_truth"],
        "predictions_file": paths["predictions"],
    }
    with fileio.open_file(paths["eval_results"], "w") as f:
        json.dump(summary, f, indent=2)
    return paths


class CocoEvaluator:
    """Accumulates post-processed batches and evaluates them against a GT dict.

    Usage::

        ev = CocoEvaluator(gt, category_ids)
        for batch in eval_batches:
            post = jax.device_get(postprocess(...))
            ev.add_batch(post, batch)
        metrics = ev.compute()
    """

    iou_type = "bbox"  # pycocotools' iouType of `compute`

    def __init__(
        self, gt: dict, category_ids: Sequence[int], score_threshold: float = 0.0
    ) -> None:
        self.gt = gt
        self.category_ids = list(category_ids)
        self.score_threshold = score_threshold
        self.summary: str = ""
        self._predictions: list[dict] = []

    def reset(self) -> None:
        """Forget all accumulated predictions."""
        self._predictions = []
        self.summary = ""

    def add_batch(self, post: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Add one batch.

        Args:
          post: ``scores`` [B, K], ``labels`` [B, K], ``boxes`` [B, K, 4] xyxy pixels of
            the original image (output of ``postprocess``, numpy or device arrays).
          batch: needs ``image_id`` [B]; optional ``image_valid`` [B] (fillers skipped).
        """
        valid = batch.get("image_valid")
        self._predictions.extend(
            predictions_to_coco(
                np.asarray(batch["image_id"]),
                np.asarray(post["scores"]),
                np.asarray(post["labels"]),
                np.asarray(post["boxes"]),
                self.category_ids,
                image_valid=None if valid is None else np.asarray(valid),
                score_threshold=self.score_threshold,
            )
        )

    @property
    def predictions(self) -> list[dict]:
        """All accumulated predictions, COCO results format."""
        return self._predictions

    def compute(self) -> dict[str, float]:
        """COCO metrics of ``iou_type`` (see :func:`coco_evaluate`); the summary text goes to
        ``summary``."""
        metrics, self.summary = coco_evaluate_with_log(self.gt, self._predictions, self.iou_type)
        return metrics
