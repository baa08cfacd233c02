"""COCO panoptic format I/O: id maps as RGB PNGs plus the ``annotations`` JSON entries.

A panoptic prediction (or annotation) of one image is a PNG whose pixels encode the segment id
as ``R + 256 G + 256^2 B`` (0 = VOID; :mod:`detr_jax.ops.panoptic_ids`) and a JSON entry
``{"image_id", "file_name", "segments_info": [{"id", "category_id", "area", "bbox", "iscrowd"}]}``
where ``category_id`` is the dataset's original id (``category_ids[label]``), ``area`` the
pixel count and ``bbox`` ``[x, y, w, h]`` pixels, inclusive of the last row / column (as
panopticapi's converters: ``w = x_max - x_min + 1``). Inside the package segments carry
contiguous labels (``category_id`` in ``0..C-1``, docs/interfaces.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from detr_jax.core import fileio
from detr_jax.ops.panoptic_ids import id_to_rgb, rgb_to_id


def segment_bbox(mask: np.ndarray) -> list[int]:
    """bool [H, W] -> ``[x, y, w, h]`` pixels of its bounding box (inclusive; zeros if empty)."""
    mask = np.asarray(mask, bool)
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def panoptic_annotation(
    ids: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    image_id: int,
    file_name: str,
    category_ids: Sequence[int],
) -> dict:
    """The COCO panoptic ``annotations`` entry of an id map.

    Args:
      ids: int [H, W] segment id per pixel, 0 = VOID.
      segments: ``{"id", "category_id" (contiguous label), ...}`` (e.g. the panoptic
        postprocessor's); a segment absent from ``ids`` is dropped (COCO entries have area > 0).
      image_id: the image's id.
      file_name: the PNG's name (relative to the panoptic folder).
      category_ids: original category id of each contiguous label.

    Returns:
      ``{"image_id", "file_name", "segments_info": [{"id", "category_id" (original id), "area",
      "bbox" [x, y, w, h], "iscrowd": 0}]}`` with Python ints. Raises ValueError when ``ids``
      holds an id without a segment.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids: expected [H, W], got shape {ids.shape}")
    present = {int(v) for v in np.unique(ids)} - {0}
    by_id = {int(s["id"]): s for s in segments}
    missing = present - set(by_id)
    if missing:
        raise ValueError(f"ids holds segment ids {sorted(missing)} that segments lack")
    info = []
    for sid, seg in by_id.items():
        if sid not in present:
            continue
        mask = ids == sid
        label = int(seg["category_id"])
        if not 0 <= label < len(category_ids):
            raise ValueError(f"segment {sid}: category_id {label} outside category_ids")
        info.append({"id": sid, "category_id": int(category_ids[label]),
                     "area": int(mask.sum()), "bbox": segment_bbox(mask), "iscrowd": 0})
    return {"image_id": int(image_id), "file_name": str(file_name), "segments_info": info}


def write_panoptic_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write int [H, W] ids as an RGB PNG."""
    with fileio.open_file(path, "wb") as f:
        Image.fromarray(id_to_rgb(ids)).save(f, format="PNG")


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """An RGB panoptic PNG -> int32 [H, W] ids."""
    with fileio.open_file(path, "rb") as f:
        rgb = np.asarray(Image.open(f).convert("RGB"))
    return rgb_to_id(rgb)


def write_panoptic_prediction(
    folder: str | os.PathLike,
    ids: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    image_id: int,
    category_ids: Sequence[int],
    file_name: str | None = None,
) -> dict:
    """Write ``<folder>/<file_name>`` (default ``<image_id>.png``, as COCO's 12-digit names are
    the image file's, pass them when known) and return its :func:`panoptic_annotation`."""
    file_name = file_name or f"{int(image_id):012d}.png"
    annotation = panoptic_annotation(ids, segments, image_id, file_name, category_ids)
    fileio.makedirs(folder)
    write_panoptic_png(os.path.join(folder, file_name), ids)
    return annotation


def read_panoptic_prediction(
    folder: str | os.PathLike,
    annotation: Mapping[str, Any],
    category_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Read one annotation entry back: ``(ids int32 [H, W], segments)``.

    Segments are the entry's ``segments_info`` dicts (copied); with ``category_ids`` their
    ``category_id`` is mapped back from the original id to the contiguous label (ValueError
    for an id outside ``category_ids``).
    """
    ids = read_panoptic_png(os.path.join(folder, annotation["file_name"]))
    segments = [dict(s) for s in annotation["segments_info"]]
    if category_ids is not None:
        label_of = {int(c): i for i, c in enumerate(category_ids)}
        for s in segments:
            if int(s["category_id"]) not in label_of:
                raise ValueError(f"segment {s['id']}: category_id {s['category_id']} not in "
                                 "category_ids")
            s["category_id"] = label_of[int(s["category_id"])]
    return ids, segments


def panoptic_json(
    annotations: Sequence[Mapping[str, Any]],
    images: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
) -> dict:
    """The panoptic JSON dict ``{"images", "annotations", "categories"}`` (categories as COCO's:
    ``{"id", "name", "isthing", ...}``), as panopticapi's ``pq_compute`` reads it."""
    return {"images": [dict(i) for i in images], "annotations": [dict(a) for a in annotations],
            "categories": [dict(c) for c in categories]}


def write_panoptic_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write a :func:`panoptic_json` dict."""
    with fileio.open_file(path, "w") as f:
        json.dump(data, f)
