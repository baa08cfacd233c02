"""Runs the validation set through the jitted eval step (built on `predict_fn`) and scores it
with pycocotools.

Writes into the workdir: `eval_results.json` (metrics and step), `predictions.json` (COCO results
with original category ids), `ground_truth.json` (the COCO ground truth it was scored against),
and, when asked, `eval_images.png` (validation images with predicted and true boxes), which also
goes to TensorBoard.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from detr_jax.core.distributed import agree_on_buckets
from detr_jax.core.sharding import to_global
from detr_jax.data.batching import batch_iterator, collate
from detr_jax.evaluation.coco_eval import CocoEvaluator, coco_gt_from_samples, write_eval_files
from detr_jax.evaluation.mask_scoring import MaskScoring
from detr_jax.evaluation.visualize import draw_detections, image_grid, save_png


class Evaluator:
    """COCO evaluation of a train state on `dataset.val_samples()` (sharded over processes).

    `eval_fn(state, batch) -> (predictions, metrics)` is the jitted eval step built on the one
    `predict_fn` (`detr_jax.inference.make_predict_fn`; `train.make_steps` builds it, this module
    imports nothing from train.py): `predictions` are the "bbox" predictions (`scores` [B, K],
    `labels` [B, K], `boxes` [B, K, 4] xyxy pixels of the original image) plus `image_id` and
    `image_valid` [B]; `metrics` are scalar eval losses.

    Every process loads every n-th validation image and runs the same number of batches; the
    eval step returns replicated outputs, so every process scores all predictions, and process 0
    alone writes the files and pictures.
    """

    def __init__(
        self,
        config: Any,
        dataset: Any,
        eval_fn: Callable,
        data_sharding: NamedSharding,
        workdir: str,
        writer: Any = None,
    ):
        self.config = config
        self.dataset = dataset
        self.eval_fn = eval_fn
        self.sharding = data_sharding
        self.workdir = workdir
        self.writer = writer
        self.samples = dataset.val_samples()
        self.with_masks = bool(getattr(dataset, "with_masks", False))
        # Datasets read from COCO files give their own ground truth (crowd, areas as in the file).
        gt_fn = getattr(dataset, "coco_ground_truth", None)
        self.gt = gt_fn() if gt_fn is not None else coco_gt_from_samples(
            self.samples, dataset.category_ids, dataset.class_names)
        names = tuple(config.eval.get("postprocessors", ("bbox",)))
        self.masks = (MaskScoring(names, dataset, self.samples, self.gt,
                                  config.eval.get("panoptic_overlap_threshold", 0.8),
                                  num_keep=config.eval.num_images_to_draw)
                      if any(n in names for n in ("segm", "panoptic")) else None)
        if config.eval.batch_size % jax.process_count():
            raise ValueError(
                f"eval.batch_size={config.eval.batch_size} is not divisible by the process count "
                f"{jax.process_count()}"
            )

    def _local_batches(self):
        """This process's share of each eval batch, padded to the bucket all processes use."""
        self._runs = getattr(self, "_runs", 0) + 1
        return agree_on_buckets(
            self._own_batches(), self.config.image_buckets, f"eval/{self._runs}"
        )

    def _own_batches(self):
        p, n = jax.process_index(), jax.process_count()
        local = self.samples[p::n]
        # Every process runs the same number of batches (fillers complete the short ones).
        per_proc = self.config.eval.batch_size // n
        steps = -(-len(self.samples) // self.config.eval.batch_size)
        it = batch_iterator(
            iter(local),
            batch_size=per_proc,
            buckets=self.config.image_buckets,
            max_boxes=self.config.max_boxes,
            with_masks=self.with_masks,
        )
        for _ in range(steps):
            batch = next(it, None)
            if batch is None:  # this process ran out: an all-filler batch
                batch = collate(
                    [],
                    buckets=self.config.image_buckets,
                    max_boxes=self.config.max_boxes,
                    batch_size=per_proc,
                    with_masks=self.with_masks,
                )
            yield batch[0]

    def run(self, state: Any, step: int, write_files: bool = True, draw: bool = False) -> dict:
        """Evaluates `state`; returns {'AP': ..., 'AP50': ..., ..., 'loss': ...}."""
        coco = CocoEvaluator(self.gt, self.dataset.category_ids)
        writes = write_files and jax.process_index() == 0
        if self.masks is not None:
            self.masks.start(self.workdir if writes else None)
        loss_sums: dict[str, float] = {}
        n_batches = 0
        for batch in self._local_batches():
            post, metrics = self.eval_fn(state, to_global(batch, self.sharding))
            post = jax.device_get(post)
            coco.add_batch(post, post)
            if self.masks is not None:
                self.masks.add(post)
            for k, v in jax.device_get(metrics).items():
                loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
            n_batches += 1
        results = coco.compute()
        if self.masks is not None:
            results.update(self.masks.compute(self.dataset.class_names))
        results.update(
            {
                f"{k}": v / max(n_batches, 1)
                for k, v in loss_sums.items()
                if k
                in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice",
                    "class_error", "cardinality_error")
            }
        )
        if jax.process_index() == 0:
            if write_files:
                write_eval_files(self.workdir, self.gt, coco.predictions, results, step)
            if draw:
                self._draw(coco.predictions, step)
        return results

    def _draw(self, predictions: list[dict], step: int) -> None:
        n = min(self.config.eval.num_images_to_draw, len(self.samples))
        if n == 0:
            return
        by_image: dict[int, list[dict]] = {}
        for p in predictions:
            by_image.setdefault(p["image_id"], []).append(p)
        cat_to_label = {c: i for i, c in enumerate(self.dataset.category_ids)}
        tiles = []
        for s in self.samples[:n]:
            preds = by_image.get(int(s["image_id"]), [])
            h, w = s["image"].shape[:2]
            oh, ow = np.asarray(s.get("orig_size", (h, w))).reshape(2)
            scale = np.array([w / ow, h / oh, w / ow, h / oh], np.float32)
            boxes = (
                np.array(
                    [[x, y, x + bw, y + bh] for x, y, bw, bh in (p["bbox"] for p in preds)],
                    np.float32,
                ).reshape(-1, 4)
                * scale
            )
            tiles.append(
                draw_detections(
                    s["image"],
                    boxes,
                    np.array([cat_to_label[p["category_id"]] for p in preds], np.int32),
                    np.array([p["score"] for p in preds], np.float32),
                    self.dataset.class_names,
                    gt_boxes=s["boxes"],
                    gt_labels=s["labels"],
                    score_threshold=self.config.eval.draw_score_threshold,
                )
            )
        grid = image_grid(tiles, cols=min(4, len(tiles)))
        save_png(os.path.join(self.workdir, "eval_images.png"), grid)
        if self.writer is not None:
            self.writer.write_images(step, {"eval/detections": grid})
        panoptic = self.masks.panoptic_picture(self.samples[:n]) if self.masks else None
        if panoptic is not None:  # predicted | true panoptic maps, side by side
            save_png(os.path.join(self.workdir, "eval_panoptic.png"), panoptic)
            if self.writer is not None:
                self.writer.write_images(step, {"eval/panoptic": panoptic})
