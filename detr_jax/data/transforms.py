"""DETR's data transforms, box-aware, on numpy samples (pure functions of sample and rng).

A sample follows docs/interfaces.md: ``image`` uint8 [H, W, 3], ``boxes`` float32 [N, 4] **xyxy
pixels** of that image, ``labels`` int32 [N], ``image_id``, ``orig_size`` int32 [2] (h, w) (the
size before any transform, never changed here).  Every transform returns a new dict (the input is
not modified) whose boxes are xyxy pixels of the new image; extra per-box keys listed in
``PER_BOX_KEYS`` (e.g. ``area``, ``iscrowd``) follow the boxes when boxes are dropped.

Masks: an optional ``masks`` bool [N, H, W] (aligned with ``boxes``) follows the image through
every transform: mirrored by ``hflip``, resized by nearest neighbour at pixel centres
(:func:`resize_masks`), cropped by ``crop``, which also drops a target whose mask is empty
inside the window.  ``is_thing`` and ``iscrowd`` [N] follow the boxes.  ``panoptic`` (the ground
truth for PQ) describes the original image, like ``orig_size``, and is never changed.

ImageNet normalisation and the conversion to normalised cxcywh happen at batching time
(``detr_jax.data.batching.collate``), so that samples stay uint8 until they are padded.

The training chain of the original (main.py ``make_coco_transforms``)::

    RandomHorizontalFlip(0.5)
    RandomSelect(RandomResize(scales, max_size=1333),
                 Compose(RandomResize([400, 500, 600]), RandomSizeCrop(384, 600),
                         RandomResize(scales, max_size=1333)))
    scales = 480, 512, ..., 800

is :func:`detr_train_transform` with :class:`TransformConfig` defaults; eval is a resize of the
shorter side to 800 with the longer side at most 1333 (:func:`detr_eval_transform`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

PER_BOX_KEYS = ("boxes", "labels", "area", "iscrowd", "masks", "is_thing")
DETR_SCALES = tuple(range(480, 801, 32))


@dataclass(frozen=True)
class TransformConfig:
    """Sizes of the DETR transforms, in pixels (shorter side unless named otherwise)."""

    scales: tuple[int, ...] = DETR_SCALES  # multi-scale training: shorter side choices
    max_size: int = 1333  # longer side cap, training and eval
    select_scales: tuple[int, ...] = (400, 500, 600)  # RandomSelect branch: first resize
    crop_min: int = 384  # RandomSizeCrop(crop_min, crop_max): crop side range
    crop_max: int = 600
    eval_size: int = 800
    hflip: bool = True
    random_select: bool = True  # False: only the multi-scale resize branch

    @classmethod
    def from_config(cls, c) -> TransformConfig:
        """From a ConfigDict with the fields above (``config.transforms``)."""
        return cls(
            scales=tuple(int(s) for s in c.scales),
            max_size=int(c.max_size),
            select_scales=tuple(int(s) for s in c.select_scales),
            crop_min=int(c.crop_min),
            crop_max=int(c.crop_max),
            eval_size=int(c.eval_size),
            hflip=bool(c.hflip),
            random_select=bool(c.random_select),
        )


def _copy(sample: dict) -> dict:
    return dict(sample)


def select_boxes(sample: dict, keep: np.ndarray) -> dict:
    """A copy of `sample` keeping only the boxes (and their per-box fields) where `keep`."""
    out = _copy(sample)
    for k in PER_BOX_KEYS:
        if k in out:
            out[k] = np.asarray(out[k])[keep]
    return out


def hflip(sample: dict) -> dict:
    """Mirror left-right; box x0' = W - x1, x1' = W - x0 (xyxy pixels)."""
    out = _copy(sample)
    w = sample["image"].shape[1]
    out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
    b = np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
    out["boxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1).astype(
        np.float32
    )
    if "masks" in sample:
        out["masks"] = np.ascontiguousarray(np.asarray(sample["masks"])[:, :, ::-1])
    return out


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of bool [N, H, W] masks to bool [N, height, width].

    Output pixel (y, x) takes input pixel (floor((y + 0.5) H / height), floor((x + 0.5) W /
    width)), in exact integer arithmetic: torch's "nearest-exact" sampling (PIL's NEAREST but
    for exact ties), so the masks stay aligned with a bilinear-resized image.
    """
    masks = np.asarray(masks, dtype=bool)
    h, w = masks.shape[1:]
    if (h, w) == (height, width):
        return masks
    rows = (2 * np.arange(height, dtype=np.int64) + 1) * h // (2 * height)
    cols = (2 * np.arange(width, dtype=np.int64) + 1) * w // (2 * width)
    return masks[:, rows[:, None], cols[None, :]]


def resized_hw(h: int, w: int, size: int, max_size: int | None) -> tuple[int, int]:
    """DETR's ``get_size_with_aspect_ratio``: shorter side -> size, longer side <= max_size.

    Returns (new_h, new_w).  Unlike the original, the longer side is also clamped to
    ``max_size`` after rounding (the original can exceed it by a few pixels), so a
    ``max_size`` square bucket always fits.
    """
    if max_size is not None:
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    cap = max_size if max_size is not None else None
    if w < h:
        long = int(size * h / w)
        return (long if cap is None else min(long, cap)), size
    long = int(size * w / h)
    return size, (long if cap is None else min(long, cap))


def resize_image(image: np.ndarray, size: int, max_size: int | None = None) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H', W', 3], (H', W') = ``resized_hw(H, W, size, max_size)``.

    PIL bilinear; the input itself when the size does not change.  The one image resize of the
    eval transform, also used by ``detr_jax.inference.Predictor``.
    """
    h, w = image.shape[:2]
    nh, nw = resized_hw(h, w, size, max_size)
    if (nh, nw) == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))


def resize(sample: dict, size: int, max_size: int | None = None) -> dict:
    """Resize (bilinear) so the shorter side is ``size`` and the longer at most ``max_size``.

    Boxes are scaled by (new_w / w, new_h / h); ``area`` by their product.
    """
    h, w = sample["image"].shape[:2]
    out = _copy(sample)
    out["image"] = resize_image(sample["image"], size, max_size)
    nh, nw = out["image"].shape[:2]
    sx, sy = nw / w, nh / h
    out["boxes"] = (
        np.asarray(sample["boxes"], np.float32).reshape(-1, 4)
        * np.array([sx, sy, sx, sy], np.float32)
    ).astype(np.float32)
    if "area" in sample:
        out["area"] = np.asarray(sample["area"], np.float32) * np.float32(sx * sy)
    if "masks" in sample:
        out["masks"] = resize_masks(sample["masks"], nh, nw)
    return out


def crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """Crop the window [top, top+height) x [left, left+width) (clamped to the image).

    Boxes are shifted, clipped to the window, and dropped when they vanish (zero width or
    height after clipping), with their labels and other per-box fields; with ``masks``, a target
    whose mask has no pixel inside the window is dropped too.
    """
    h, w = sample["image"].shape[:2]
    top, left = max(0, int(top)), max(0, int(left))
    height, width = min(int(height), h - top), min(int(width), w - left)
    out = _copy(sample)
    out["image"] = sample["image"][top : top + height, left : left + width]
    b = np.asarray(sample["boxes"], np.float32).reshape(-1, 4) - np.array(
        [left, top, left, top], np.float32
    )
    b = np.clip(b, 0, np.array([width, height, width, height], np.float32))
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    out["boxes"] = b
    if "masks" in sample:
        out["masks"] = np.asarray(sample["masks"])[:, top : top + height, left : left + width]
        keep &= out["masks"].any(axis=(1, 2))
    if "area" in out:  # as the original: area of the clipped box
        out["area"] = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).astype(np.float32)
    return select_boxes(out, keep)


def random_size_crop(
    sample: dict, min_size: int, max_size: int, rng: np.random.Generator
) -> dict:
    """RandomSizeCrop: crop side w in [min_size, min(W, max_size)] (same for h), at a random spot.

    When the image is smaller than ``min_size`` the range shrinks to the image side.
    """
    h, w = sample["image"].shape[:2]
    hi_w, hi_h = min(w, max_size), min(h, max_size)
    cw = int(rng.integers(min(min_size, hi_w), hi_w + 1))
    ch = int(rng.integers(min(min_size, hi_h), hi_h + 1))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return crop(sample, top, left, ch, cw)


def random_resize(
    sample: dict, sizes: Sequence[int], max_size: int | None, rng: np.random.Generator
) -> dict:
    """RandomResize: shorter side drawn uniformly from ``sizes``."""
    return resize(sample, int(sizes[int(rng.integers(len(sizes)))]), max_size)


def detr_train_transform(
    sample: dict, cfg: TransformConfig, rng: np.random.Generator
) -> dict:
    """The original training chain (module docstring); returns xyxy pixels of the new image."""
    if cfg.hflip and rng.random() < 0.5:
        sample = hflip(sample)
    if cfg.random_select and rng.random() >= 0.5:  # RandomSelect(p=0.5): second branch
        sample = random_resize(sample, cfg.select_scales, None, rng)
        sample = random_size_crop(sample, cfg.crop_min, cfg.crop_max, rng)
    return random_resize(sample, cfg.scales, cfg.max_size, rng)


def detr_eval_transform(sample: dict, cfg: TransformConfig) -> dict:
    """Eval: shorter side ``eval_size``, longer side at most ``max_size``."""
    return resize(sample, cfg.eval_size, cfg.max_size)
