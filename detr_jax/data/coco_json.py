"""Loading and checking a COCO-format annotations file (``instances_*.json`` layout).

:func:`load_coco_json` reads the file once, checks every record, and returns a
:class:`CocoIndex`: per-image training targets (xyxy **pixels** of the image as declared by
``images[].width/height``, contiguous labels) plus the category mapping and a cleaned ground
truth dict for pycocotools.

What is fatal (raises :class:`DataError` with one line naming the file and the record): the file
is not JSON, a top-level key or a record key is missing, an annotation refers to an image id not
in ``images`` or to a category id not in ``categories``, duplicate ids, an image file that does not
exist, a bbox that is not 4 numbers.

What is repaired and counted (``CocoIndex.counts``, logged once): boxes with w <= 0 or h <= 0 are
dropped (``degenerate``); boxes reaching outside the image are clipped to it (``clipped``); crowd
annotations (``iscrowd=1``) are kept out of the training targets (``crowd``) but stay in the
ground truth, where pycocotools treats them as ignore regions.  Images without annotations stay
(negatives).

Masks (``with_masks=True`` only; otherwise ``segmentation`` is not read): every kept
annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) is checked without
rasterising it (detr_jax/data/coco_masks.py) and kept raw in its record, to be decoded when the
sample is loaded (:meth:`CocoRecord.masks`).  An annotation whose segmentation is missing or bad
(odd-length polygon, RLE size not the image's, ...) is logged on one line naming the file and
the annotation id, left out of the targets and the ground truth, and counted
(``bad_segmentation``).

Labels: ``label_mode="contiguous"`` maps the sorted category ids to 0..K-1
(``category_ids[label]`` maps back); ``"original"`` uses the category id itself as the label
(DETR's COCO convention, num_classes = max id + 1, unused ids named ``"N/A"``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from detr_jax.data.coco_masks import decode_masks, segmentation_problem

_log = logging.getLogger(__name__)

_TOP_KEYS = ("images", "annotations", "categories")
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")
_CAT_KEYS = ("id", "name")
LABEL_MODES = ("contiguous", "original")


class DataError(ValueError):
    """A dataset that cannot be used as given; the message names the file and the record."""


@dataclass
class CocoRecord:
    """One image: ``boxes`` float32 [N, 4] xyxy pixels (clipped, non-crowd); ``labels`` [N]."""

    image_id: int
    path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    segmentations: list | None = None  # raw COCO segmentations [N] (with_masks only)

    def masks(self) -> np.ndarray:
        """The targets' masks, bool [N, height, width] (records loaded with ``with_masks``)."""
        if self.segmentations is None:
            raise ValueError(f"{self.path}: masks requested from annotations loaded without "
                             "masks (with_masks=False)")
        return decode_masks(self.segmentations, self.height, self.width)


@dataclass
class CocoIndex:
    records: list[CocoRecord]
    category_ids: tuple[int, ...]  # original category id of each label
    class_names: tuple[str, ...]  # name of each label
    ground_truth: dict  # COCO dict for pycocotools (areas filled, bboxes clipped)
    label_of: dict[int, int]  # category id -> label
    counts: dict[str, int] = field(default_factory=dict)


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        raise DataError(f"annotations file not found: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be an object with {_TOP_KEYS}")
    for k in _TOP_KEYS:
        if k not in data:
            raise DataError(f"{path}: missing top-level key {k!r} (need {_TOP_KEYS})")
    return data


def _need(path: str, where: str, rec: dict, keys: tuple[str, ...]) -> None:
    if not isinstance(rec, dict):
        raise DataError(f"{path}: {where} is not an object")
    for k in keys:
        if k not in rec:
            rid = f" (id={rec['id']})" if "id" in rec else ""
            raise DataError(f"{path}: {where}{rid} lacks key {k!r} (need {keys})")


def _int(path: str, where: str, rec: dict, key: str, default: int | None = None) -> int:
    value = rec.get(key, default)
    try:
        if float(value) != int(value):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        rid = f" (id={rec['id']})" if "id" in rec else ""
        raise DataError(f"{path}: {where}{rid} has {key}={value!r}, not an integer") from None


def categories_of(
    path: str, data: dict, label_mode: str
) -> tuple[tuple[int, ...], tuple[str, ...], dict[int, int]]:
    """(category_ids per label, class_names per label, {category id: label})."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode={label_mode!r}; choose one of {LABEL_MODES}")
    names: dict[int, str] = {}
    for i, c in enumerate(data["categories"]):
        _need(path, f"categories[{i}]", c, _CAT_KEYS)
        cid = _int(path, f"categories[{i}]", c, "id")
        if cid in names:
            raise DataError(f"{path}: categories[{i}] repeats category id {cid}")
        names[cid] = str(c["name"])
    if not names:
        raise DataError(f"{path}: 'categories' is empty")
    if label_mode == "contiguous":
        ids = tuple(sorted(names))
        return ids, tuple(names[i] for i in ids), {cid: k for k, cid in enumerate(ids)}
    if min(names) < 0:
        raise DataError(f"{path}: negative category id {min(names)}")
    ids = tuple(range(max(names) + 1))
    return ids, tuple(names.get(i, "N/A") for i in ids), {cid: cid for cid in names}


def read_images(path: str, data: dict, image_dir: str, check_files: bool = True
                ) -> dict[int, dict]:
    """The file's `images` section checked: {image id: the record plus `_path` (its file
    under `image_dir`)}. Raises DataError naming the record (a missing key, a repeated id, a
    size <= 0, with `check_files` a missing file)."""
    images: dict[int, dict] = {}
    for i, im in enumerate(data["images"]):
        _need(path, f"images[{i}]", im, _IMAGE_KEYS)
        iid = _int(path, f"images[{i}]", im, "id")
        if iid in images:
            raise DataError(f"{path}: images[{i}] repeats image id {iid}")
        width = _int(path, f"images[{i}]", im, "width")
        height = _int(path, f"images[{i}]", im, "height")
        if width <= 0 or height <= 0:
            raise DataError(f"{path}: images[{i}] (id={iid}) has size "
                            f"{im['width']}x{im['height']}")
        file_path = os.path.join(image_dir, str(im["file_name"]))
        if check_files and not os.path.isfile(file_path):
            raise DataError(f"{path}: images[{i}] (id={iid}) file not found: {file_path}")
        images[iid] = dict(im, _path=file_path)
    return images


def load_coco_json(
    ann_path: str,
    image_dir: str,
    *,
    label_mode: str = "contiguous",
    categories: tuple[tuple[int, ...], tuple[str, ...], dict[int, int]] | None = None,
    check_files: bool = True,
    with_masks: bool = False,
) -> CocoIndex:
    """Read and check ``ann_path``; image files are ``image_dir/<file_name>``.

    ``with_masks``: check and keep the segmentations too (module docstring).

    ``categories``: the mapping to use (e.g. the training file's for the validation file); by
    default it comes from this file's ``categories``.  Raises DataError (module docstring).
    """
    data = _read_json(ann_path)
    if categories is None:
        categories = categories_of(ann_path, data, label_mode)
    category_ids, class_names, to_label = categories
    declared = {_int(ann_path, f"categories[{i}]", c, "id")
                for i, c in enumerate(data["categories"]) if isinstance(c, dict) and "id" in c}

    images = read_images(ann_path, data, image_dir, check_files)

    counts = {"degenerate": 0, "clipped": 0, "crowd": 0}
    if with_masks:
        counts["bad_segmentation"] = 0
    per_image: dict[int, tuple[list, list, list]] = {iid: ([], [], []) for iid in images}
    gt_anns: list[dict] = []
    ann_ids: set[int] = set()
    for i, a in enumerate(data["annotations"]):
        _need(ann_path, f"annotations[{i}]", a, _ANN_KEYS)
        where = f"{ann_path}: annotations[{i}] (id={a['id']})"
        aid = _int(ann_path, f"annotations[{i}]", a, "id")
        if aid in ann_ids:
            raise DataError(f"{where} repeats annotation id {aid}")
        ann_ids.add(aid)
        iid = _int(ann_path, f"annotations[{i}]", a, "image_id")
        cid = _int(ann_path, f"annotations[{i}]", a, "category_id")
        if iid not in images:
            raise DataError(f"{where} refers to image_id {iid}, which is not in 'images'")
        if cid not in declared or cid not in to_label:
            raise DataError(f"{where} has category_id {cid}, which is not declared in "
                            f"'categories' (ids {sorted(to_label)})")
        bbox = a["bbox"]
        if not (isinstance(bbox, list | tuple) and len(bbox) == 4):
            raise DataError(f"{where} bbox must be [x, y, w, h], got {bbox!r}")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError) as e:
            raise DataError(f"{where} bbox must be 4 numbers, got {bbox!r}") from e
        if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
            counts["degenerate"] += 1
            continue
        iw, ih = int(images[iid]["width"]), int(images[iid]["height"])
        box = np.clip([x, y, x + w, y + h], 0, [iw, ih, iw, ih])
        if not np.allclose(box, [x, y, x + w, y + h]):
            counts["clipped"] += 1
        if box[2] <= box[0] or box[3] <= box[1]:  # entirely outside the image
            counts["degenerate"] += 1
            continue
        crowd = _int(ann_path, f"annotations[{i}]", a, "iscrowd", 0)
        if with_masks:
            problem = (segmentation_problem(a["segmentation"], ih, iw) if "segmentation" in a
                       else "has no 'segmentation'")
            if problem is not None:
                counts["bad_segmentation"] += 1
                _log.warning("%s: %s; skipped (%d bad segmentation(s) so far)", where, problem,
                             counts["bad_segmentation"])
                continue
        gt = dict(a, bbox=[float(box[0]), float(box[1]), float(box[2] - box[0]),
                           float(box[3] - box[1])], iscrowd=crowd)
        gt.setdefault("area", gt["bbox"][2] * gt["bbox"][3])
        gt_anns.append(gt)
        if crowd:
            counts["crowd"] += 1
            continue
        per_image[iid][0].append(box)
        per_image[iid][1].append(to_label[cid])
        if with_masks:
            per_image[iid][2].append(a["segmentation"])

    records = []
    for iid, im in images.items():
        boxes, labels, segms = per_image[iid]
        records.append(CocoRecord(
            image_id=iid, path=im["_path"], width=int(im["width"]), height=int(im["height"]),
            boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
            labels=np.asarray(labels, np.int32).reshape(-1),
            segmentations=segms if with_masks else None))
    if any(counts.values()):
        _log.warning("%s: dropped %d boxes with w/h <= 0, clipped %d boxes to their image, kept "
                     "%d crowd boxes out of the training targets, skipped %d annotations with a "
                     "bad segmentation", ann_path, counts["degenerate"], counts["clipped"],
                     counts["crowd"], counts.get("bad_segmentation", 0))
    ground_truth = {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": [{k: v for k, v in im.items() if k != "_path"} for im in images.values()],
        "annotations": gt_anns,
        "categories": [
            {"id": int(c["id"]), "name": str(c["name"]),
             "supercategory": c.get("supercategory", "")}
            for c in data["categories"]
        ],
    }
    return CocoIndex(records, tuple(category_ids), tuple(class_names), ground_truth,
                     dict(to_label), counts)
