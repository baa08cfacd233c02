"""Scores the mask postprocessors of an evaluation: COCO mask AP ("segm") and PQ ("panoptic").

The `Evaluator` hands each eval batch's replicated outputs (host numpy) to `MaskScoring.add`:
`post["segm"]` (evaluation/postprocess_masks.py `postprocess_segm`: `scores`, `labels`,
`masks` [B, K, H, W] canvas probabilities, `size`) and `post["panoptic"]` (the dense part of
`postprocess_panoptic`), beside `image_id`, `orig_size` [B, 2] and `image_valid` [B].
Panoptic segments are made on the host per image (`panoptic_batch`) and scored at once against
the sample's `panoptic` ground truth ({`ids` [H0, W0], `segments`}, contiguous labels), so only
the first `num_images_to_draw` id maps are kept (for the pictures) and COCO-sized runs stay
in memory. With `write_files`, the predictions are written in the COCO panoptic format
(`<workdir>/panoptic_predictions/<image_id>.png` + `panoptic_predictions.json`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detr_jax.evaluation.coco_mask_eval import CocoMaskEvaluator, coco_mask_gt_from_samples
from detr_jax.evaluation.panoptic_format import (
    panoptic_annotation,
    panoptic_json,
    write_panoptic_json,
    write_panoptic_png,
)
from detr_jax.evaluation.panoptic_quality import PanopticQuality
from detr_jax.evaluation.postprocess_masks import panoptic_batch
from detr_jax.evaluation.visualize import image_grid
from detr_jax.evaluation.visualize_masks import blend_panoptic

PANOPTIC_DIR = "panoptic_predictions"


def _has_segmentations(gt: Mapping[str, Any]) -> bool:
    anns = gt.get("annotations", [])
    return bool(anns) and all("segmentation" in a for a in anns)


class MaskScoring:
    """Mask AP and PQ of one evaluation pass (`start`, `add` per batch, `compute`).

    Args:
      names: the config's `eval.postprocessors` (only "segm" and "panoptic" are scored here).
      dataset: the dataset (`category_ids`, `class_names`, optional `is_thing` per class).
      samples: its validation samples (masks for "segm" without mask ground truth in `gt`,
        `panoptic` for "panoptic").
      gt: the COCO ground truth the box AP uses; its annotations serve the mask AP when they
        carry `segmentation` (COCO files), else masks come from the samples.
      overlap_threshold: the panoptic postprocessor's segment overlap threshold.
      num_keep: id maps kept for the pictures (the first images).
    """

    def __init__(self, names: Sequence[str], dataset: Any, samples: Sequence[Mapping],
                 gt: Mapping[str, Any], overlap_threshold: float = 0.8, num_keep: int = 8):
        self.names = tuple(n for n in names if n in ("segm", "panoptic"))
        self.category_ids = tuple(dataset.category_ids)
        n_classes = len(self.category_ids)
        self.is_thing = tuple(getattr(dataset, "is_thing", None) or (True,) * n_classes)
        self.overlap_threshold = float(overlap_threshold)
        self.num_keep = int(num_keep)
        self.mask_gt = None
        if "segm" in self.names:
            self.mask_gt = (dict(gt) if _has_segmentations(gt) else
                            coco_mask_gt_from_samples(samples, self.category_ids,
                                                      dataset.class_names))
        self.panoptic_gt: dict[int, Mapping] = {}
        if "panoptic" in self.names:
            missing = [s["image_id"] for s in samples if "panoptic" not in s]
            if missing:
                raise ValueError(f"eval.postprocessors has 'panoptic' but {len(missing)} "
                                 f"validation samples have no panoptic ground truth (image "
                                 f"{missing[0]} first); use a panoptic dataset")
            self.panoptic_gt = {int(s["image_id"]): s["panoptic"] for s in samples}
        self.start()

    def start(self, write_dir: str | None = None) -> None:
        """A fresh pass; with `write_dir`, the panoptic PNGs go to
        `<write_dir>/panoptic_predictions`."""
        self.segm = (CocoMaskEvaluator(self.mask_gt, self.category_ids)
                     if self.mask_gt is not None else None)
        self.pq = (PanopticQuality(dict(enumerate(self.is_thing)))
                   if "panoptic" in self.names else None)
        self.write_dir = write_dir
        self.annotations: list[dict] = []
        self.kept: dict[int, dict] = {}

    def add(self, post: Mapping[str, Any]) -> None:
        """One batch's eval-step outputs on the host (see the module docstring)."""
        if self.segm is not None:
            self.segm.add_batch(post["segm"], post)
        if self.pq is None:
            return
        results = panoptic_batch(post["panoptic"], post["orig_size"], self.is_thing,
                                 self.overlap_threshold, post.get("image_valid"))
        for image_id, result in zip(np.asarray(post["image_id"]).reshape(-1), results,
                                    strict=True):
            if result is None:
                continue
            image_id = int(image_id)
            gt = self.panoptic_gt[image_id]
            self.pq.add(gt["ids"], gt["segments"], result["ids"], result["segments"])
            if len(self.kept) < self.num_keep:
                self.kept[image_id] = result
            if self.write_dir is not None:
                self._write(image_id, result)

    def _write(self, image_id: int, result: Mapping[str, Any]) -> None:
        file_name = f"{image_id:012d}.png"
        folder = os.path.join(self.write_dir, PANOPTIC_DIR)
        os.makedirs(folder, exist_ok=True)
        write_panoptic_png(os.path.join(folder, file_name), result["ids"])
        self.annotations.append(panoptic_annotation(result["ids"], result["segments"], image_id,
                                                    file_name, self.category_ids))

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, float]:
        """`mask_AP`, `mask_AP50`, ... (COCO segm) and `PQ`, `SQ`, `RQ`, `PQ_th`, ..., `PQ_st`
        (fractions in [0, 1]); writes `panoptic_predictions.json` when files are written."""
        metrics: dict[str, float] = {}
        if self.segm is not None:
            metrics.update({f"mask_{k}": v for k, v in self.segm.compute().items()})
        if self.pq is not None:
            metrics.update(self.pq.metrics())
            if self.write_dir is not None:
                names = class_names or [str(c) for c in self.category_ids]
                cats = [{"id": int(c), "name": n, "isthing": int(t)} for c, n, t in
                        zip(self.category_ids, names, self.is_thing, strict=True)]
                images = [{"id": a["image_id"], "file_name": a["file_name"]}
                          for a in self.annotations]
                write_panoptic_json(os.path.join(self.write_dir, "panoptic_predictions.json"),
                                    panoptic_json(self.annotations, images, cats))
        return metrics

    def panoptic_picture(self, samples: Sequence[Mapping]) -> np.ndarray | None:
        """A grid of the kept predicted panoptic maps blended over their images (ground truth
        beside each), or None without panoptic predictions."""
        if not self.kept:
            return None
        tiles = []
        for s in samples:
            result = self.kept.get(int(s["image_id"]))
            if result is None:
                continue
            image = np.asarray(s["image"])
            gt = s["panoptic"]
            pred_ids = _to_size(result["ids"], image.shape[:2])
            gt_ids = _to_size(np.asarray(gt["ids"]), image.shape[:2])
            tiles.append(np.concatenate([blend_panoptic(image, pred_ids, result["segments"]),
                                         blend_panoptic(image, gt_ids, gt["segments"])], axis=1))
        return image_grid(tiles, cols=min(2, len(tiles))) if tiles else None


def _to_size(ids: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """An id map at the original size, shown on the (possibly resized) sample image (nearest)."""
    if ids.shape == tuple(hw):
        return ids
    rows = (np.arange(hw[0]) * ids.shape[0] // hw[0]).clip(0, ids.shape[0] - 1)
    cols = (np.arange(hw[1]) * ids.shape[1] // hw[1]).clip(0, ids.shape[1] - 1)
    return ids[rows][:, cols]
