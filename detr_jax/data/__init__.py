"""Datasets and the input pipeline: `build_dataset(config)` and `train_batches(...)`.

A dataset exposes `num_classes`, `class_names`, `category_ids` (label -> original category id),
`train_samples(start_index, process_index, process_count)` and `val_samples()`; samples and
batches follow docs/interfaces.md.  `build_dataset` sets its `with_masks` (config field
`data.with_masks`: samples carry `masks`, batches `masks` / `is_thing`); panoptic datasets add
`is_thing` per class.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from detr_jax.data.augment import make_augment
from detr_jax.data.batching import CollateStats, batch_iterator
from detr_jax.data.coco_json import DataError
from detr_jax.data.shapes import STANDARD_SHAPES, ShapesDataset, ShapesSpec
from detr_jax.data.shapes_panoptic import PANOPTIC_SPECS, ShapesPanopticDataset

DATASET_CHOICES = ("shapes", "coco", "custom", "shapes_panoptic")
SHAPES_SPECS = {
    "standard": STANDARD_SHAPES,
    # An easier diagnostic variant: 4 classes, no distractor lines or blobs.
    "plain": ShapesSpec(
        class_names=("circle", "square", "triangle", "cross"), num_lines=(0, 0), num_blobs=(0, 0)
    ),
}


def with_masks(config: Any) -> bool:
    """`config.data.with_masks` (False for configs without the field)."""
    data = config.get("data")
    return bool(data.get("with_masks", False)) if data is not None else False


def build_dataset(config: Any) -> Any:
    """The dataset named by `config.dataset`, its `with_masks` set from `data.with_masks`.

    Raises DataError (one line naming the file and record) for unusable COCO-format files.
    """
    if config.dataset in ("shapes", "shapes_panoptic"):
        specs, cls = ((SHAPES_SPECS, ShapesDataset) if config.dataset == "shapes"
                      else (PANOPTIC_SPECS, ShapesPanopticDataset))
        if config.shapes.spec not in specs:
            raise ValueError(f"shapes.spec={config.shapes.spec!r}; choose one of {tuple(specs)} "
                             f"(dataset={config.dataset!r})")
        ds = cls(specs[config.shapes.spec], config.seed, config.shapes.num_val)
        if ds.num_classes != config.num_classes:
            raise ValueError(
                f"num_classes={config.num_classes} but the {config.dataset} dataset has "
                f"{ds.num_classes} classes {ds.class_names}"
            )
    elif config.dataset == "custom":
        ds = _build_custom(config)
    elif config.dataset == "coco":
        ds = _build_coco(config)
    else:
        raise ValueError(f"dataset={config.dataset!r}; choose one of {DATASET_CHOICES}")
    ds.with_masks = with_masks(config)
    return ds


def _build_custom(config: Any) -> Any:
    """COCO-format files on disk: instances (custom.py) or, with the PNG folders
    `custom.*_panoptic_masks` set, panoptic (custom_panoptic.py)."""
    from detr_jax.data.custom import CocoJsonDataset
    from detr_jax.data.custom_panoptic import CocoPanopticDataset
    from detr_jax.data.transforms import TransformConfig

    cu = config.custom
    kw = dict(seed=config.seed, transforms=TransformConfig.from_config(config.transforms),
              num_workers=cu.num_workers, augment=make_augment(config.augment),
              with_masks=with_masks(config))
    if cu.get("train_panoptic_masks", ""):
        ds = CocoPanopticDataset(cu.train_annotations, cu.train_panoptic_masks, cu.train_images,
                                 cu.val_annotations, cu.val_panoptic_masks, cu.val_images, **kw)
    else:
        ds = CocoJsonDataset(cu.train_annotations, cu.train_images, cu.val_annotations,
                             cu.val_images, **kw)
    if ds.num_classes != config.num_classes:
        raise DataError(
            f"num_classes={config.num_classes} but {cu.train_annotations} declares "
            f"{ds.num_classes} categories {ds.class_names}; set --config.num_classes="
            f"{ds.num_classes}"
        )
    return ds


def _build_coco(config: Any) -> Any:
    """COCO 2017 through TFDS (detr_jax/data/tfds_coco.py, the only module importing TF)."""
    from detr_jax.data.tfds_coco import NUM_CLASSES, TfdsCocoDataset, check_prepared
    from detr_jax.data.tfds_coco_panoptic import (
        MASK_DATASETS,
        NUM_PANOPTIC_CLASSES,
        TfdsCocoPanopticDataset,
    )
    from detr_jax.data.transforms import TransformConfig

    cc = config.coco
    check_prepared(cc.name, cc.data_dir)
    panoptic = cc.name in MASK_DATASETS
    if panoptic and config.num_classes != NUM_PANOPTIC_CLASSES:
        raise DataError(f"num_classes={config.num_classes}: {cc.name} has "
                        f"{NUM_PANOPTIC_CLASSES} classes (80 things, then 53 stuff)")
    if not panoptic and config.num_classes != NUM_CLASSES:
        raise DataError(f"num_classes={config.num_classes}: COCO uses {NUM_CLASSES} (the "
                        "original category ids, as DETR)")
    return (TfdsCocoPanopticDataset if panoptic else TfdsCocoDataset)(
        cc.data_dir, seed=config.seed, transforms=TransformConfig.from_config(config.transforms),
        train_split=cc.train_split, val_split=cc.val_split,
        annotations_file=config.eval.annotations_file, max_val_images=cc.max_val_images,
        shuffle_buffer=cc.shuffle_buffer, num_workers=cc.num_workers, name=cc.name,
        augment=make_augment(config.augment),
    )


def category_records(dataset: Any) -> list[dict]:
    """{`id` (the dataset's category id), `name`} per contiguous label, with `isthing` for
    panoptic datasets (those with `is_thing` per class): the workdir's `categories.json`."""
    records = [{"id": int(i), "name": str(n)}
               for i, n in zip(dataset.category_ids, dataset.class_names, strict=True)]
    if getattr(dataset, "is_thing", None) is not None:
        for record, thing in zip(records, dataset.is_thing, strict=True):
            record["isthing"] = int(bool(thing))
    return records


def train_batches(
    dataset: Any,
    *,
    global_batch_size: int,
    start_step: int,
    buckets: Any,
    max_boxes: int,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 4,
    agree: Callable[[Iterator[dict]], Iterator[dict]] | None = None,
    with_masks: bool | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of each global training batch, from `start_step` on.

    `with_masks` (default: the dataset's `with_masks`, set by `build_dataset`) adds the batch's
    `masks` [B, M, Hb, Wb] and `is_thing` [B, M] (detr_jax/data/batching.py).

    Global batch s holds the stream's samples s*B .. (s+1)*B-1, so the data order is a pure
    function of (seed, step) and resuming at any step reproduces it; process p of n gets the
    samples i with i % n == p (B/n of them per batch). Batches are produced in a background
    thread, `prefetch` ahead; `agree` (e.g. `distributed.agree_on_buckets`) wraps the local batch
    stream in that thread.
    """
    if global_batch_size % process_count:
        raise ValueError(
            f"batch_size={global_batch_size} is not divisible by the process count {process_count}"
        )
    samples = dataset.train_samples(
        start_index=start_step * global_batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    batches = batch_iterator(
        samples,
        batch_size=global_batch_size // process_count,
        buckets=buckets,
        max_boxes=max_boxes,
        with_masks=getattr(dataset, "with_masks", False) if with_masks is None else with_masks,
    )
    local = _count_dropped_boxes(batches)
    return _background(local if agree is None else agree(local), prefetch)


def _count_dropped_boxes(
    batches: Iterator[tuple[dict[str, np.ndarray], Any]], every: int = 1000
) -> Iterator[dict[str, np.ndarray]]:
    """Drops the CollateStats, logging the running counts of truncated (beyond max_boxes) and
    degenerate boxes when they first occur and then every ``every`` batches."""
    total = CollateStats()
    reported = False
    for n, (batch, stats) in enumerate(batches, start=1):
        total = total + stats
        if (total.num_truncated_boxes or total.num_degenerate_boxes) and (
            not reported or n % every == 0
        ):
            logging.warning(
                "input: %d boxes beyond max_boxes truncated, %d boxes with w/h <= 0 dropped "
                "in %d batches so far (raise max_boxes if truncation is frequent)",
                total.num_truncated_boxes, total.num_degenerate_boxes, n)
            reported = True
        yield batch


def _background(it: Iterator[Any], size: int) -> Iterator[Any]:
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def work():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # surfaced in the consumer
            q.put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
