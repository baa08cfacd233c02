"""COCO panoptic files (``panoptic_*.json`` + a folder of RGB-id PNGs) -> panoptic samples.

:func:`load_coco_panoptic` reads and checks the JSON once and returns a :class:`PanopticIndex`
(records, the category mapping); :func:`panoptic_sample` decodes one record into a sample of
docs/interfaces.md "Segmentation": ``image`` uint8 [H, W, 3], ``masks`` bool [N, H, W] (one per
segment: PNG pixels whose id = R + 256 G + 256^2 B equals the segment's id), ``labels`` int32
[N], ``boxes`` float32 [N, 4] xyxy pixels (the bbox of the decoded mask), ``is_thing``,
``iscrowd`` bool [N] (crowd segments stay in the sample; batching leaves them out of the
training targets), ``panoptic`` {``ids`` int32 [H, W], ``segments``} (contiguous labels as
``category_id``), ``image_id``, ``orig_size``.

Labels: the things (``isthing=1``) sorted by category id, then the stuff sorted by id, so
``category_ids[label]`` maps back and ``is_thing[label]`` says which (COCO's 133 classes give
labels 0..79 things, 80..132 stuff).

Fatal (DataError, one line naming the file and the record): not JSON, a missing key, duplicate
image or segment ids, a segment of an undeclared category, an annotation for an unknown image,
an image or PNG file that does not exist.  Repaired when a sample is decoded, logged with the PNG
name: a segment with no pixel in the PNG is dropped; PNG ids that no segment declares become
VOID (0).  A PNG whose size is not the declared image size raises DataError.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from detr_jax.data.coco_json import DataError, _int, _need, _read_json, read_images
from detr_jax.data.image_io import load_rgb
from detr_jax.ops.panoptic_ids import rgb_to_id

_log = logging.getLogger(__name__)
_ANN_KEYS = ("image_id", "file_name", "segments_info")
_CAT_KEYS = ("id", "name", "isthing")


@dataclass
class PanopticRecord:
    """One image: its file, its PNG and its segments (``id``, ``category_id`` original,
    ``iscrowd``), as declared."""

    image_id: int
    path: str
    png_path: str
    width: int
    height: int
    segments: list[dict]


@dataclass
class PanopticIndex:
    records: list[PanopticRecord]
    category_ids: tuple[int, ...]  # original category id of each label
    class_names: tuple[str, ...]
    is_thing: tuple[bool, ...]
    label_of: dict[int, int]  # category id -> label
    counts: dict[str, int] = field(default_factory=dict)


Categories = tuple[tuple[int, ...], tuple[str, ...], tuple[bool, ...], dict[int, int]]


def panoptic_categories_of(path: str, data: dict) -> Categories:
    """(category_ids, class_names, is_thing per label, {category id: label}); things first."""
    cats: dict[int, tuple[str, bool]] = {}
    for i, c in enumerate(data["categories"]):
        _need(path, f"categories[{i}]", c, _CAT_KEYS)
        cid = _int(path, f"categories[{i}]", c, "id")
        if cid in cats:
            raise DataError(f"{path}: categories[{i}] repeats category id {cid}")
        cats[cid] = (str(c["name"]), bool(_int(path, f"categories[{i}]", c, "isthing")))
    if not cats:
        raise DataError(f"{path}: 'categories' is empty")
    ids = sorted(cats, key=lambda cid: (not cats[cid][1], cid))
    return (tuple(ids), tuple(cats[i][0] for i in ids), tuple(cats[i][1] for i in ids),
            {cid: k for k, cid in enumerate(ids)})


def load_coco_panoptic(
    json_path: str,
    png_dir: str,
    image_dir: str,
    *,
    categories: Categories | None = None,
    check_files: bool = True,
) -> PanopticIndex:
    """Read and check ``json_path``; PNGs are ``png_dir/<annotation file_name>``, images
    ``image_dir/<image file_name>``.  ``categories``: the mapping to use (e.g. the training
    file's), by default this file's.  Raises DataError (module docstring)."""
    data = _read_json(json_path)
    if categories is None:
        categories = panoptic_categories_of(json_path, data)
    category_ids, class_names, is_thing, label_of = categories
    images = read_images(json_path, data, image_dir, check_files)

    records: dict[int, PanopticRecord] = {}
    for i, a in enumerate(data["annotations"]):
        _need(json_path, f"annotations[{i}]", a, _ANN_KEYS)
        iid = _int(json_path, f"annotations[{i}]", a, "image_id")
        where = f"{json_path}: annotations[{i}] (image_id={a['image_id']})"
        if iid not in images:
            raise DataError(f"{where} refers to an image id not in 'images'")
        if iid in records:
            raise DataError(f"{where} is the second annotation of image {iid}")
        png = os.path.join(png_dir, str(a["file_name"]))
        if check_files and not os.path.isfile(png):
            raise DataError(f"{where} PNG not found: {png}")
        segments, seen = [], set()
        for j, seg in enumerate(a["segments_info"]):
            _need(json_path, f"annotations[{i}].segments_info[{j}]", seg, ("id", "category_id"))
            sid = _int(json_path, f"annotations[{i}].segments_info[{j}]", seg, "id")
            cid = _int(json_path, f"annotations[{i}].segments_info[{j}]", seg, "category_id")
            if sid in seen or sid <= 0:
                raise DataError(f"{where} segments_info[{j}] has segment id {sid} (repeated, or "
                                "0 = VOID)")
            seen.add(sid)
            if cid not in label_of:
                raise DataError(f"{where} segments_info[{j}] (id={sid}) has category_id {cid}, "
                                f"which is not declared in 'categories'")
            crowd = _int(json_path, f"annotations[{i}].segments_info[{j}]", seg, "iscrowd", 0)
            segments.append({"id": sid, "category_id": cid, "iscrowd": bool(crowd)})
        im = images[iid]
        records[iid] = PanopticRecord(iid, im["_path"], png, int(im["width"]),
                                      int(im["height"]), segments)
    counts = {"images_without_annotation": len(images) - len(records)}
    if counts["images_without_annotation"]:
        _log.warning("%s: %d images have no panoptic annotation; left out", json_path,
                     counts["images_without_annotation"])
    return PanopticIndex([records[i] for i in images if i in records], tuple(category_ids),
                         tuple(class_names), tuple(is_thing), dict(label_of), counts)


def _bbox(mask: np.ndarray) -> list[float]:
    """[x0, y0, x1, y1] pixels (x1, y1 one past the last pixel) of a non-empty mask [H, W]."""
    ys = np.nonzero(mask.any(axis=1))[0]
    xs = np.nonzero(mask.any(axis=0))[0]
    return [float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)]


def segments_to_sample(
    ids: np.ndarray, segments: list[dict], label_of: dict[int, int], is_thing: tuple[bool, ...],
    where: str,
) -> dict:
    """The target fields of a sample (module docstring) from a segment-id map int [H, W] and
    its segments [{id, category_id (original), iscrowd}]; ``where`` names the source in log
    lines."""
    ids = np.asarray(ids, np.int32)
    h, w = ids.shape
    masks, labels, crowd, boxes, segs = [], [], [], [], []
    declared = np.zeros(ids.shape, bool)
    empty = []
    for seg in segments:
        m = ids == seg["id"]
        if not m.any():
            empty.append(int(seg["id"]))
            continue
        declared |= m
        label = label_of[int(seg["category_id"])]
        x0, y0, x1, y1 = _bbox(m)
        masks.append(m)
        labels.append(label)
        crowd.append(bool(seg.get("iscrowd", False)))
        boxes.append([x0, y0, x1, y1])
        segs.append({"id": int(seg["id"]), "category_id": label, "iscrowd": int(crowd[-1]),
                     "area": int(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    if empty:
        _log.warning("%s: %d segment(s) with no pixel dropped (ids %s)", where, len(empty),
                     empty[:5])
    stray = (ids != 0) & ~declared
    if stray.any():
        _log.warning("%s: %d pixels carry ids %s that no segment declares; set to VOID", where,
                     int(stray.sum()), sorted(np.unique(ids[stray]).tolist())[:5])
        ids = np.where(stray, 0, ids)
    n = len(masks)
    labels_a = np.asarray(labels, np.int32).reshape(n)
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(n, 4),
        "labels": labels_a,
        "masks": np.stack(masks) if n else np.zeros((0, h, w), bool),
        "is_thing": np.asarray([is_thing[k] for k in labels], bool).reshape(n),
        "iscrowd": np.asarray(crowd, bool).reshape(n),
        "panoptic": {"ids": ids, "segments": segs},
    }


def read_png_ids(png_path: str) -> np.ndarray:
    """A COCO panoptic PNG -> segment ids int32 [H, W]."""
    with Image.open(png_path) as im:
        return rgb_to_id(np.asarray(im.convert("RGB")))


def panoptic_sample(rec: PanopticRecord, index: PanopticIndex) -> dict:
    """The sample of ``rec`` (module docstring); raises CorruptImageError for an undecodable
    image and DataError for a PNG whose size is not the declared one."""
    image = load_rgb(rec.path, (rec.width, rec.height))
    ids = read_png_ids(rec.png_path)
    if ids.shape != (rec.height, rec.width):
        raise DataError(f"{rec.png_path}: PNG size {ids.shape[1]}x{ids.shape[0]} (w x h) is not "
                        f"the declared {rec.width}x{rec.height} of image {rec.image_id}")
    if image.shape[:2] != ids.shape:
        _log.warning("%s: decoded size %s differs from the declared %dx%d (w x h); resizing",
                     rec.path, image.shape[1::-1], rec.width, rec.height)
        image = np.asarray(Image.fromarray(image).resize((rec.width, rec.height)))
    sample = segments_to_sample(ids, rec.segments, index.label_of, index.is_thing,
                                rec.png_path)
    sample.update(image=image, image_id=rec.image_id,
                  orig_size=np.array([rec.height, rec.width], np.int32))
    return sample
