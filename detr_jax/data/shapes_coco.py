"""COCO files for the shapes dataset (or any samples with masks): ground truth with RLE masks
and the exported image folder. `python -m detr_jax.data.shapes --export DIR ...` writes them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np
from PIL import Image


def coco_categories(class_names: Iterable[str]) -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(class_names)]


def image_file_name(image_id: int) -> str:
    return f"{image_id:06d}.png"


def coco_ground_truth(
    samples: Iterable[dict], class_names: Iterable[str], category_ids: list[int] | None = None
) -> dict:
    """COCO-format dict (images, annotations, categories) for samples with masks.

    The evaluation's ground truth (``coco_gt_from_samples``: ``bbox`` [x, y, w, h] pixels of the
    full box, ``area`` the visible mask area) plus ``file_name`` per image and the visible mask
    as RLE ``segmentation`` (counts as str). Label k gets ``category_ids[k]`` (default k + 1).
    """
    from pycocotools import mask as mask_util

    from detr_jax.evaluation.coco_eval import coco_gt_from_samples

    samples = list(samples)
    names = list(class_names)
    ids = list(category_ids) if category_ids else list(range(1, len(names) + 1))
    if len(ids) != len(names) or len(set(ids)) != len(ids):
        raise ValueError(f"category_ids {ids} must be {len(names)} distinct ids, one per class")
    gt = coco_gt_from_samples(samples, ids, names)
    gt["categories"] = [
        dict(c, id=i) for c, i in zip(coco_categories(names), ids, strict=True)
    ]
    for image in gt["images"]:
        image["file_name"] = image_file_name(image["id"])
    masks = [m for s in samples for m in s["masks"]]
    for ann, m in zip(gt["annotations"], masks, strict=True):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        ann["segmentation"] = rle
    return gt


def export_coco(
    samples: Iterable[dict],
    out_dir: str,
    class_names: Iterable[str],
    category_ids: list[int] | None = None,
) -> str:
    """Write ``out_dir/images/<id:06d>.png`` and ``out_dir/annotations.json``; return its path."""
    samples = list(samples)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    for s in samples:
        Image.fromarray(s["image"]).save(
            os.path.join(out_dir, "images", image_file_name(s["image_id"])))
    path = os.path.join(out_dir, "annotations.json")
    with open(path, "w") as f:
        json.dump(coco_ground_truth(samples, class_names, category_ids), f)
    return path
