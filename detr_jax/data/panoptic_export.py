"""COCO panoptic files for panoptic samples (shapes_panoptic's ``--export``, or any samples with
``masks``, ``labels``, ``is_thing``, ``panoptic`` as in docs/interfaces.md "Segmentation").

Layout written by :func:`export_coco_panoptic` (COCO's own: the PNG folder is the JSON's path
without ``.json``, as ``panoptic_val2017.json`` + ``panoptic_val2017/``)::

    DIR/images/<image_id:06d>.png     the images
    DIR/panoptic/<image_id:06d>.png   segment ids as RGB (id = R + 256 G + 256^2 B, 0 = VOID)
    DIR/panoptic.json                 images, annotations [{image_id, file_name, segments_info}],
                                      categories [{id, name, supercategory, isthing}]
    DIR/instances.json                the things as COCO instances with RLE segmentations

Category ids in the files are ``category_ids[label]``; ``segments_info`` entries are ``{id,
category_id, iscrowd, area, bbox [x, y, w, h] pixels}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from detr_jax.data.shapes_coco import coco_ground_truth, image_file_name
from detr_jax.ops.panoptic_ids import id_to_rgb


def panoptic_categories(
    class_names: Sequence[str], category_ids: Sequence[int], is_thing: Sequence[bool]
) -> list[dict]:
    """COCO panoptic ``categories``: [{id, name, supercategory, isthing 0/1}], one per label."""
    if not len(class_names) == len(category_ids) == len(is_thing):
        raise ValueError(f"{len(class_names)} class names, {len(category_ids)} category ids and "
                         f"{len(is_thing)} is_thing flags: need one of each per class")
    return [{"id": int(i), "name": str(n), "supercategory": "thing" if t else "stuff",
             "isthing": int(bool(t))}
            for n, i, t in zip(class_names, category_ids, is_thing, strict=True)]


def panoptic_ground_truth(
    samples: Iterable[dict],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    is_thing: Sequence[bool],
) -> dict:
    """The COCO panoptic JSON dict of ``samples`` (their ``panoptic`` entries, labels mapped
    to ``category_ids``); PNG file names ``<image_id:06d>.png``."""
    images, annotations = [], []
    for s in samples:
        iid = int(s["image_id"])
        h, w = (int(v) for v in np.asarray(s.get("orig_size", s["image"].shape[:2])).reshape(2))
        images.append({"id": iid, "file_name": image_file_name(iid), "height": h, "width": w})
        segments = [dict(seg, category_id=int(category_ids[int(seg["category_id"])]))
                    for seg in s["panoptic"]["segments"]]
        annotations.append({"image_id": iid, "file_name": image_file_name(iid),
                            "segments_info": segments})
    return {"info": {"description": "detr_jax panoptic ground truth"}, "licenses": [],
            "images": images, "annotations": annotations,
            "categories": panoptic_categories(class_names, category_ids, is_thing)}


def things_ground_truth(
    samples: Iterable[dict],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    is_thing: Sequence[bool],
) -> dict:
    """COCO instance dict (RLE ``segmentation``, ``iscrowd`` from the samples) of the thing
    targets of panoptic samples; ``categories`` are the thing classes only."""
    things = [k for k, t in enumerate(is_thing) if t]
    new_label = {k: j for j, k in enumerate(things)}
    subset = []
    crowd: list[int] = []
    for s in samples:
        labels = np.asarray(s["labels"]).reshape(-1)
        keep = np.asarray([bool(is_thing[int(lab)]) for lab in labels], bool).reshape(-1)
        sub = {k: v for k, v in s.items() if k not in ("boxes", "labels", "masks")}
        sub["boxes"] = np.asarray(s["boxes"], np.float32).reshape(-1, 4)[keep]
        sub["labels"] = np.asarray([new_label[int(lab)] for lab in labels[keep]], np.int32)
        sub["masks"] = np.asarray(s["masks"], bool)[keep]
        subset.append(sub)
        crowd += np.asarray(s.get("iscrowd", np.zeros(len(labels), bool)), bool)[keep].tolist()
    gt = coco_ground_truth(subset, [class_names[k] for k in things],
                           [int(category_ids[k]) for k in things])
    for ann, c in zip(gt["annotations"], crowd, strict=True):
        ann["iscrowd"] = int(c)
    return gt


def export_coco_panoptic(
    samples: Iterable[dict],
    out_dir: str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    is_thing: Sequence[bool],
) -> tuple[str, str]:
    """Write the files of the module docstring; returns (panoptic.json, instances.json)."""
    samples = list(samples)
    for sub in ("images", "panoptic"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    for s in samples:
        name = image_file_name(int(s["image_id"]))
        Image.fromarray(s["image"]).save(os.path.join(out_dir, "images", name))
        rgb = id_to_rgb(np.asarray(s["panoptic"]["ids"]))
        Image.fromarray(rgb, "RGB").save(os.path.join(out_dir, "panoptic", name))
    pan_path = os.path.join(out_dir, "panoptic.json")
    with open(pan_path, "w") as f:
        json.dump(panoptic_ground_truth(samples, class_names, category_ids, is_thing), f)
    inst_path = os.path.join(out_dir, "instances.json")
    with open(inst_path, "w") as f:
        json.dump(things_ground_truth(samples, class_names, category_ids, is_thing), f)
    return pan_path, inst_path
