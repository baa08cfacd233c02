"""Batching: per-image samples -> fixed-shape padded batches (pure numpy).

Shared by the shapes dataset and the COCO pipeline.  Input samples follow ``docs/interfaces.md``
(``image`` uint8 [H, W, 3], ``boxes`` float32 [N, 4] xyxy pixels, ``labels`` int32 [N],
``image_id``, optional ``orig_size`` int32 [2] (h, w); ``masks`` are ignored).  The output Batch:

- ``image``: float32 [B, Hb, Wb, 3], ImageNet-normalised ``(x/255 - mean)/std``, image at the
  top-left of a zero canvas; (Hb, Wb) is one bucket for the whole batch
- ``pixel_mask``: bool [B, Hb, Wb], True on real pixels
- ``boxes``: float32 [B, M, 4], normalised cxcywh relative to each unpadded (h, w); zeros where
  invalid
- ``labels``: int32 [B, M]; ``box_valid``: bool [B, M]
- ``size``, ``orig_size``: int32 [B, 2] (h, w); ``image_id``: int32 [B]
- ``image_valid``: bool [B], False for filler images

``collate`` returns ``(batch, stats)`` where ``stats`` is a :class:`CollateStats`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # RGB, 0..1 scale
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)  # RGB, 0..1 scale


@dataclass(frozen=True)
class CollateStats:
    """Counts of boxes that did not make it into a batch.

    ``num_degenerate_boxes``: boxes with width or height <= 0 after clipping to the image.
    ``num_truncated_boxes``: valid boxes beyond ``max_boxes`` (the first ``max_boxes`` are kept).
    Stats add up with ``+``.
    """

    num_truncated_boxes: int = 0
    num_degenerate_boxes: int = 0

    def __add__(self, other: CollateStats) -> CollateStats:
        return CollateStats(self.num_truncated_boxes + other.num_truncated_boxes,
                            self.num_degenerate_boxes + other.num_degenerate_boxes)

    def as_dict(self) -> dict[str, int]:
        return {"num_truncated_boxes": self.num_truncated_boxes,
                "num_degenerate_boxes": self.num_degenerate_boxes}


def choose_bucket(h: int, w: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Smallest bucket (Hb, Wb) by area with Hb >= h and Wb >= w (ties: first in ``buckets``).

    Raises ValueError naming the size and the buckets if none fits.
    """
    fitting = [(int(bh), int(bw)) for bh, bw in buckets if bh >= h and bw >= w]
    if not fitting:
        raise ValueError(f"no bucket fits an image of size (h={h}, w={w}); "
                         f"buckets (h, w): {list(buckets)}")
    return min(fitting, key=lambda b: b[0] * b[1])


def xyxy_pixels_to_cxcywh_normalised(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boxes float [N, 4] xyxy pixels -> float32 [N, 4] cxcywh normalised by (w, h)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.T
    out = np.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], axis=1)
    return out.astype(np.float32)


def _prepare_targets(
    sample: dict, max_boxes: int
) -> tuple[np.ndarray, np.ndarray, CollateStats]:
    """Clip, drop degenerate, truncate; returns (cxcywh normalised [K,4], labels [K], stats)."""
    h, w = sample["image"].shape[:2]
    boxes = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(sample["labels"], dtype=np.int32).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"image {sample.get('image_id')}: {len(boxes)} boxes but "
                         f"{len(labels)} labels")
    boxes = np.clip(boxes, 0.0, np.array([w, h, w, h], dtype=np.float32))
    cxcywh = xyxy_pixels_to_cxcywh_normalised(boxes, h, w)
    # Tested after normalising, so that a sub-pixel width that underflows to 0 is dropped too.
    keep = (cxcywh[:, 2] > 0) & (cxcywh[:, 3] > 0)
    num_degenerate = int((~keep).sum())
    cxcywh, labels = cxcywh[keep], labels[keep]
    num_truncated = max(0, len(cxcywh) - max_boxes)
    cxcywh, labels = cxcywh[:max_boxes], labels[:max_boxes]
    stats = CollateStats(num_truncated, num_degenerate)
    return cxcywh, labels, stats


def collate(
    samples: list[dict],
    *,
    buckets: Sequence[tuple[int, int]],
    max_boxes: int,
    batch_size: int | None = None,
) -> tuple[dict[str, np.ndarray], CollateStats]:
    """Pad and stack samples into one Batch (format in the module docstring).

    The bucket is the smallest one fitting (max h, max w) over the samples.  Boxes are clipped to
    the image, those with w <= 0 or h <= 0 dropped, the rest truncated to ``max_boxes``.  With
    ``batch_size``, filler images (all-zero, ``pixel_mask`` False, no boxes, ``image_valid``
    False, ``image_id`` -1, sizes 0) complete the batch to ``batch_size``.
    Returns ``(batch, stats)``.
    """
    n = len(samples)
    b = n if batch_size is None else batch_size
    if n > b:
        raise ValueError(f"{n} samples do not fit in batch_size={batch_size}")
    if b == 0:
        raise ValueError("collate needs at least one sample or a positive batch_size")
    if max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0, got {max_boxes}")
    sizes = [s["image"].shape[:2] for s in samples]
    max_h = max((s[0] for s in sizes), default=0)
    max_w = max((s[1] for s in sizes), default=0)
    hb, wb = choose_bucket(max_h, max_w, buckets)

    batch = {
        "image": np.zeros((b, hb, wb, 3), np.float32),
        "pixel_mask": np.zeros((b, hb, wb), bool),
        "boxes": np.zeros((b, max_boxes, 4), np.float32),
        "labels": np.zeros((b, max_boxes), np.int32),
        "box_valid": np.zeros((b, max_boxes), bool),
        "size": np.zeros((b, 2), np.int32),
        "orig_size": np.zeros((b, 2), np.int32),
        "image_id": np.full((b,), -1, np.int32),
        "image_valid": np.zeros((b,), bool),
    }
    scale = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
    offset = (IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
    # Lookup table [256, 3] of the same float32 expression: identical values, ~2x faster than
    # converting and scaling whole images (the largest host cost per image at COCO sizes).
    lut = np.arange(256, dtype=np.float32)[:, None] * scale - offset
    stats = CollateStats()
    for i, s in enumerate(samples):
        image = np.asarray(s["image"])
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {s.get('image_id')}: expected [H, W, 3], got {image.shape}")
        h, w = image.shape[:2]
        for c in range(3):
            batch["image"][i, :h, :w, c] = lut[image[..., c], c]
        batch["pixel_mask"][i, :h, :w] = True
        boxes, labels, st = _prepare_targets(s, max_boxes)
        k = len(boxes)
        batch["boxes"][i, :k] = boxes
        batch["labels"][i, :k] = labels
        batch["box_valid"][i, :k] = True
        batch["size"][i] = (h, w)
        orig = s.get("orig_size")
        batch["orig_size"][i] = (h, w) if orig is None else np.asarray(orig).reshape(2)
        batch["image_id"][i] = int(s["image_id"])
        batch["image_valid"][i] = True
        stats = stats + st
    return batch, stats


def batch_iterator(
    samples_iter: Iterable[dict],
    *,
    batch_size: int,
    buckets: Sequence[tuple[int, int]],
    max_boxes: int,
) -> Iterator[tuple[dict[str, np.ndarray], CollateStats]]:
    """Group samples into ``collate`` outputs ``(batch, stats)`` of exactly ``batch_size``.

    Works on infinite iterators; for a finite one the last, partial batch is completed with
    filler images (``image_valid`` False).  An empty iterator yields nothing.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    chunk: list[dict] = []
    for sample in samples_iter:
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield collate(chunk, buckets=buckets, max_boxes=max_boxes, batch_size=batch_size)
            chunk = []
    if chunk:
        yield collate(chunk, buckets=buckets, max_boxes=max_boxes, batch_size=batch_size)


def pad_to_bucket(batch: dict[str, np.ndarray], hb: int, wb: int) -> dict[str, np.ndarray]:
    """``batch`` with ``image`` [B, hb, wb, 3] and ``pixel_mask`` [B, hb, wb] (zero / False
    padding at the bottom and right, as ``collate`` pads); the other arrays are unchanged.

    The bucket must be at least the batch's own; returns ``batch`` itself when it is the same.
    """
    h, w = batch["image"].shape[1:3]
    if (h, w) == (hb, wb):
        return batch
    if hb < h or wb < w:
        raise ValueError(f"cannot pad a ({h}, {w}) batch to the smaller bucket ({hb}, {wb})")
    out = dict(batch)
    out["image"] = np.pad(batch["image"], ((0, 0), (0, hb - h), (0, wb - w), (0, 0)))
    out["pixel_mask"] = np.pad(batch["pixel_mask"], ((0, 0), (0, hb - h), (0, wb - w)))
    return out
