"""Batching: per-image samples -> fixed-shape padded batches (pure numpy).

Shared by the shapes dataset and the COCO pipeline.  Input samples follow ``docs/interfaces.md``
(``image`` uint8 [H, W, 3], ``boxes`` float32 [N, 4] xyxy pixels, ``labels`` int32 [N],
``image_id``, optional ``orig_size`` int32 [2] (h, w), optional ``iscrowd`` bool [N] (crowd
targets are left out of the batch), and ``masks`` bool [N, H, W] / ``is_thing`` bool [N], read
only with ``with_masks``).  The output Batch:

- ``image``: float32 [B, Hb, Wb, 3], ImageNet-normalised ``(x/255 - mean)/std``, image at the
  top-left of a zero canvas; (Hb, Wb) is one bucket for the whole batch
- ``pixel_mask``: bool [B, Hb, Wb], True on real pixels
- ``boxes``: float32 [B, M, 4], normalised cxcywh relative to each unpadded (h, w); zeros where
  invalid
- ``labels``: int32 [B, M]; ``box_valid``: bool [B, M]
- ``size``, ``orig_size``: int32 [B, 2] (h, w); ``image_id``: int32 [B]
- ``image_valid``: bool [B], False for filler images
- with ``with_masks=True``: ``masks`` uint8 [B, M, Hb, Wb] (0/1), each target's mask on the
  padded canvas (image at the top-left), in the same slots as ``boxes``, zeros in padding and in
  invalid slots; ``is_thing`` bool [B, M], the sample's ``is_thing`` (all True for a dataset
  without it: every target a thing), False in invalid slots

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
    ``num_crowd_boxes``: crowd targets (``iscrowd``) left out, as intended (not a problem).
    Stats add up with ``+``.
    """

    num_truncated_boxes: int = 0
    num_degenerate_boxes: int = 0
    num_crowd_boxes: int = 0

    def __add__(self, other: CollateStats) -> CollateStats:
        return CollateStats(self.num_truncated_boxes + other.num_truncated_boxes,
                            self.num_degenerate_boxes + other.num_degenerate_boxes,
                            self.num_crowd_boxes + other.num_crowd_boxes)

    def as_dict(self) -> dict[str, int]:
        return {"num_truncated_boxes": self.num_truncated_boxes,
                "num_degenerate_boxes": self.num_degenerate_boxes,
                "num_crowd_boxes": self.num_crowd_boxes}


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, CollateStats]:
    """Drop crowd, clip, drop degenerate, truncate; returns (cxcywh normalised [K, 4],
    labels [K], the kept targets' indices [K] into the sample's, stats)."""
    h, w = sample["image"].shape[:2]
    boxes = np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(sample["labels"], dtype=np.int32).reshape(-1)
    if len(boxes) != len(labels):
        raise ValueError(f"image {sample.get('image_id')}: {len(boxes)} boxes but "
                         f"{len(labels)} labels")
    crowd = np.asarray(sample.get("iscrowd", np.zeros(len(boxes), bool)), bool).reshape(-1)
    if len(crowd) != len(boxes):
        raise ValueError(f"image {sample.get('image_id')}: {len(boxes)} boxes but "
                         f"{len(crowd)} iscrowd flags")
    boxes = np.clip(boxes, 0.0, np.array([w, h, w, h], dtype=np.float32))
    cxcywh = xyxy_pixels_to_cxcywh_normalised(boxes, h, w)
    # Tested after normalising, so that a sub-pixel width that underflows to 0 is dropped too.
    ok = (cxcywh[:, 2] > 0) & (cxcywh[:, 3] > 0)
    num_degenerate = int((~ok & ~crowd).sum())
    index = np.nonzero(ok & ~crowd)[0]
    num_truncated = max(0, len(index) - max_boxes)
    index = index[:max_boxes]
    stats = CollateStats(num_truncated, num_degenerate, int(crowd.sum()))
    return cxcywh[index], labels[index], index, stats


def _sample_masks(sample: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample's (masks bool [N, H, W], is_thing bool [N]), checked against its image."""
    iid = sample.get("image_id")
    if "masks" not in sample:
        raise ValueError(f"image {iid}: with_masks=True (data.with_masks) but the sample has "
                         "no 'masks'")
    masks = np.asarray(sample["masks"])
    h, w = sample["image"].shape[:2]
    if masks.shape != (n, h, w):
        raise ValueError(f"image {iid}: masks have shape {masks.shape}, expected {(n, h, w)} "
                         "(one [H, W] mask per box, the image's size)")
    is_thing = np.asarray(sample.get("is_thing", np.ones(n, bool)), bool).reshape(-1)
    if len(is_thing) != n:
        raise ValueError(f"image {iid}: {n} boxes but {len(is_thing)} is_thing flags")
    return masks, is_thing


def collate(
    samples: list[dict],
    *,
    buckets: Sequence[tuple[int, int]],
    max_boxes: int,
    batch_size: int | None = None,
    with_masks: bool = False,
) -> tuple[dict[str, np.ndarray], CollateStats]:
    """Pad and stack samples into one Batch (format in the module docstring).

    The bucket is the smallest one fitting (max h, max w) over the samples.  Crowd targets
    (``iscrowd``) are left out; boxes are clipped to the image, those with w <= 0 or h <= 0
    dropped, the rest truncated to ``max_boxes``; with ``with_masks`` the masks (and
    ``is_thing``) of the kept targets fill the same slots.  With ``batch_size``, filler images
    (all-zero, ``pixel_mask`` False, no boxes, ``image_valid`` False, ``image_id`` -1, sizes 0)
    complete the batch to ``batch_size``.  Returns ``(batch, stats)``.
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
    if with_masks:
        batch["masks"] = np.zeros((b, max_boxes, hb, wb), np.uint8)
        batch["is_thing"] = np.zeros((b, max_boxes), bool)
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
        boxes, labels, index, st = _prepare_targets(s, max_boxes)
        k = len(boxes)
        if with_masks:
            masks, is_thing = _sample_masks(s, len(np.asarray(s["labels"]).reshape(-1)))
            batch["masks"][i, :k, :h, :w] = masks[index]
            batch["is_thing"][i, :k] = is_thing[index]
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
    with_masks: bool = False,
) -> Iterator[tuple[dict[str, np.ndarray], CollateStats]]:
    """Group samples into ``collate`` outputs ``(batch, stats)`` of exactly ``batch_size``.

    Works on infinite iterators; for a finite one the last, partial batch is completed with
    filler images (``image_valid`` False).  An empty iterator yields nothing.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    kw = dict(buckets=buckets, max_boxes=max_boxes, batch_size=batch_size, with_masks=with_masks)
    chunk: list[dict] = []
    for sample in samples_iter:
        chunk.append(sample)
        if len(chunk) == batch_size:
            yield collate(chunk, **kw)
            chunk = []
    if chunk:
        yield collate(chunk, **kw)


def pad_to_bucket(batch: dict[str, np.ndarray], hb: int, wb: int) -> dict[str, np.ndarray]:
    """``batch`` with ``image`` [B, hb, wb, 3], ``pixel_mask`` [B, hb, wb] and, when present,
    ``masks`` [B, M, hb, wb] (zero / False padding at the bottom and right, as ``collate``
    pads); the other arrays are unchanged.

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
    if "masks" in batch:
        out["masks"] = np.pad(batch["masks"], ((0, 0), (0, 0), (0, hb - h), (0, wb - w)))
    return out
