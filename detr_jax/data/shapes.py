"""The embedded synthetic detection dataset "shapes".

Procedural images (numpy + ``PIL.ImageDraw``), a pure function of ``(seed, index)``: coloured
geometric shapes (circle, square, triangle, cross, diamond, ring) on a non-trivial background
(two-colour gradient, faint blobs, thin lines, pixel noise).  Objects may overlap a little; later
objects are drawn on top.

Per-image sample (see ``docs/interfaces.md``):

- ``image``: uint8 [H, W, 3]
- ``boxes``: float32 [N, 4], xyxy **pixels**, the full (pre-occlusion) box of each drawn shape:
  ``x0, y0`` of its first pixel and ``x1, y1`` one past its last pixel, so ``x1 - x0`` is the
  width in pixels.  Boxes lie inside the image.
- ``labels``: int32 [N], contiguous labels ``0..num_classes-1`` (index into ``class_names``)
- ``masks``: bool [N, H, W], *visible* instance masks (after occlusion by later objects)
- ``image_id``: int, the sample index
- ``orig_size``: int32 [2], (h, w)

CLI (COCO export, loadable with ``pycocotools.coco.COCO``; files as detr_jax/data/shapes_coco.py)::

    python -m detr_jax.data.shapes --export DIR --num-images N [--seed S] [--split train|val]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from detr_jax.data.shapes_coco import coco_categories, export_coco

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond", "ring")
# Classes drawn with a free aspect ratio (the others keep a square box).
_ASPECT_CLASSES = frozenset({"triangle", "cross", "diamond"})
TRAIN_STREAM = 0
VAL_STREAM = 1  # distinct SeedSequence entropy, so val never overlaps the training stream


@dataclass(frozen=True)
class ShapesSpec:
    """Generator parameters.  Sizes are box sides in pixels (the longer side of the box).

    ``small_fraction`` of the objects get a side in ``small_size`` (inclusive range); the rest
    get a side in ``[min_size, round(max_size_fraction * image_size)]``.  A placement is rejected
    when its box IoU with an earlier object exceeds ``max_iou`` or when it would leave less than
    ``min_visible_fraction`` of an earlier object's pixels visible.
    """

    image_size: int = 96
    min_objects: int = 1
    max_objects: int = 6
    class_names: tuple[str, ...] = CLASS_NAMES
    small_fraction: float = 0.25
    small_size: tuple[int, int] = (8, 12)
    min_size: int = 14
    max_size_fraction: float = 0.55
    min_aspect: float = 0.7  # short/long side for triangle, cross, diamond
    max_iou: float = 0.3
    min_visible_fraction: float = 0.5
    min_contrast: float = 90.0  # min RGB distance of an object colour to what lies beneath it
    num_lines: tuple[int, int] = (2, 5)  # inclusive range of thin distractor lines
    num_blobs: tuple[int, int] = (0, 2)  # inclusive range of faint distractor ellipses
    noise_std: float = 6.0
    max_attempts: int = 50  # placement attempts per object before it is skipped

    def __post_init__(self) -> None:
        unknown = set(self.class_names) - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"unknown shape classes {sorted(unknown)}; known: {CLASS_NAMES}")
        if len(set(self.class_names)) != len(self.class_names) or not self.class_names:
            raise ValueError(f"class_names must be distinct and non-empty: {self.class_names}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {self}")
        if not 1 <= self.small_size[0] <= self.small_size[1] < self.min_size <= self.max_size:
            raise ValueError(f"need small sizes < min_size <= max_size, got {self}")
        if self.max_size > self.image_size:
            raise ValueError("max_size_fraction must be <= 1")

    @property
    def max_size(self) -> int:
        """Largest box side in pixels of a non-small object."""
        return int(round(self.max_size_fraction * self.image_size))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# The fixed benchmark spec.  FROZEN: changing any field (or the generator code) changes every
# image and breaks comparability of benchmark numbers across runs and commits.
STANDARD_SHAPES = ShapesSpec(
    image_size=96,
    min_objects=1,
    max_objects=6,
    class_names=CLASS_NAMES,
    small_fraction=0.25,
    small_size=(8, 12),
    min_size=14,
    max_size_fraction=0.55,
)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _background(spec: ShapesSpec, rng: np.random.Generator) -> np.ndarray:
    """Gradient + faint blobs + thin lines, uint8 [S, S, 3]."""
    size = spec.image_size
    c0, c1 = rng.integers(0, 256, (2, 3)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    yy, xx = _grid(size)
    t = xx * math.cos(angle) + yy * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0 + t[..., None] * (c1 - c0)
    pil = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(spec.num_blobs[0], spec.num_blobs[1] + 1)):
        # Irregular low-contrast polygon (so it is not mistaken for a circle object).
        cx, cy = rng.integers(0, size, 2)
        k = int(rng.integers(5, 9))
        ang = np.sort(rng.uniform(0.0, 2.0 * math.pi, k))
        rad = rng.uniform(size / 10, size / 3, k)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        colour = np.clip(bg[cy, cx] + rng.integers(-18, 19, 3), 0, 255).astype(int)
        draw.polygon([tuple(p) for p in pts.tolist()], fill=tuple(colour.tolist()))
    for _ in range(rng.integers(spec.num_lines[0], spec.num_lines[1] + 1)):
        pts = rng.integers(-size // 4, size + size // 4, 4).tolist()
        colour = rng.integers(0, 256, 3).tolist()
        draw.line(pts, fill=tuple(colour), width=1)
    return np.array(pil)


def _shape_mask(name: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Binary mask bool [h, w] of a shape filling a w x h pixel box."""
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    x1, y1 = w - 1, h - 1
    cx, cy = (w - 1) // 2, (h - 1) // 2
    if name == "circle":
        draw.ellipse([0, 0, x1, y1], fill=1)
    elif name == "square":
        draw.rectangle([0, 0, x1, y1], fill=1)
    elif name == "ring":
        t = max(2, int(round(0.22 * min(w, h))))
        draw.ellipse([0, 0, x1, y1], fill=1)
        draw.ellipse([t, t, x1 - t, y1 - t], fill=0)
    elif name == "triangle":
        if rng.random() < 0.5:  # apex up
            draw.polygon([(cx, 0), (x1, y1), (0, y1)], fill=1)
        else:  # apex down
            draw.polygon([(0, 0), (x1, 0), (cx, y1)], fill=1)
    elif name == "cross":
        th = max(2, int(round(h / 3)))
        tw = max(2, int(round(w / 3)))
        top, left = (h - th) // 2, (w - tw) // 2
        draw.rectangle([0, top, x1, top + th - 1], fill=1)
        draw.rectangle([left, 0, left + tw - 1, y1], fill=1)
    elif name == "diamond":
        draw.polygon([(cx, 0), (x1, cy), (cx, y1), (0, cy)], fill=1)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return np.asarray(im, dtype=bool)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box ``a`` [4] against boxes ``b`` [K, 4] (same units)."""
    iw = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def _pick_colour(refs: np.ndarray, spec: ShapesSpec, rng: np.random.Generator) -> np.ndarray:
    """An RGB colour at distance >= min_contrast from every reference colour [K, 3] if possible."""
    cands = rng.integers(0, 256, (16, 3)).astype(np.float32)
    dist = np.linalg.norm(cands[:, None, :] - refs[None, :, :], axis=-1).min(axis=1)
    ok = np.nonzero(dist >= spec.min_contrast)[0]
    choice = ok[0] if ok.size else int(np.argmax(dist))
    return cands[choice]


def place_objects(
    spec: ShapesSpec, canvas: np.ndarray, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """Draw ``spec``'s objects onto ``canvas`` (float32 [S, S, 3], modified in place).

    Returns (full boxes float32 [4] xyxy pixels, labels, visible masks bool [S, S]), one entry
    per drawn object in drawing order (later objects on top).  Used by ``generate_sample`` and
    by the panoptic variant (detr_jax/data/shapes_panoptic.py).
    """
    size = spec.image_size
    n_target = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    areas: list[int] = []  # full (pre-occlusion) mask areas
    visible: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    colours: list[np.ndarray] = []
    for _ in range(n_target):
        label = int(rng.integers(spec.num_classes))
        name = spec.class_names[label]
        lo, hi = spec.small_size if rng.random() < spec.small_fraction else (
            spec.min_size, spec.max_size)
        for _attempt in range(spec.max_attempts):
            side = int(rng.integers(lo, hi + 1))
            w = h = side
            if name in _ASPECT_CLASSES:
                short = max(spec.small_size[0], int(round(side * rng.uniform(spec.min_aspect, 1))))
                w, h = (side, short) if rng.random() < 0.5 else (short, side)
            x0 = int(rng.integers(0, size - w + 1))
            y0 = int(rng.integers(0, size - h + 1))
            crop = _shape_mask(name, w, h, rng)
            ys, xs = np.nonzero(crop)
            box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1],
                           dtype=np.float32)
            ious = _box_iou(box, np.stack(boxes)) if boxes else np.zeros(0)
            if ious.size and ious.max() > spec.max_iou:
                continue
            mask = np.zeros((size, size), dtype=bool)
            mask[y0:y0 + h, x0:x0 + w] = crop
            # Earlier objects under this one must keep min_visible_fraction of their pixels.
            hits = ious > 0
            new_visible = [v & ~mask if hit else v for v, hit in zip(visible, hits, strict=True)]
            if any(nv.sum() < spec.min_visible_fraction * area
                   for nv, area, hit in zip(new_visible, areas, hits, strict=True) if hit):
                continue
            break
        else:
            continue  # no valid placement for this object: skip it
        # Contrast against the pixels beneath and against overlapping objects' colours.
        refs = [canvas[mask].mean(axis=0)]
        refs += [c for c, hit in zip(colours, ious > 0, strict=True) if hit]
        colour = _pick_colour(np.stack(refs), spec, rng)
        canvas[mask] = colour
        visible = new_visible + [mask]
        areas.append(int(crop.sum()))
        boxes.append(box)
        labels.append(label)
        colours.append(colour)
    return boxes, labels, visible


def add_noise(canvas: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform pixel noise of standard deviation ``noise_std`` (cheaper than Gaussian) on the
    float32 canvas [S, S, 3]; returns the uint8 image."""
    noise = rng.random(canvas.shape, dtype=np.float32) - np.float32(0.5)
    canvas += np.float32(noise_std * math.sqrt(12.0)) * noise
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def generate_sample(spec: ShapesSpec, seed: int, index: int, *, stream: int = TRAIN_STREAM) -> dict:
    """Generate sample ``index`` of the stream ``(seed, stream)``; a pure function of its args.

    Uses ``np.random.default_rng([seed, index])`` (``[seed, index, stream]`` for a non-zero
    ``stream``, e.g. ``VAL_STREAM``).  ``seed`` and ``index`` must be >= 0.  Returns the sample
    dict described in the module docstring (boxes xyxy pixels, masks visible after occlusion).
    """
    entropy = [seed, index] if stream == TRAIN_STREAM else [seed, index, stream]
    rng = np.random.default_rng(entropy)
    size = spec.image_size
    canvas = _background(spec, rng).astype(np.float32)
    boxes, labels, visible = place_objects(spec, canvas, rng)
    image = add_noise(canvas, spec.noise_std, rng)
    n = len(boxes)
    return {
        "image": image,
        "boxes": np.stack(boxes).astype(np.float32) if n else np.zeros((0, 4), np.float32),
        "labels": np.asarray(labels, dtype=np.int32).reshape(n),
        "masks": np.stack(visible) if n else np.zeros((0, size, size), dtype=bool),
        "image_id": int(index),
        "orig_size": np.array([size, size], dtype=np.int32),
    }


class ShapesDataset:
    """Train stream and fixed validation set of the shapes dataset.

    Training sample ``i`` of the global stream is ``generate_sample(spec, seed, i)``; validation
    sample ``j`` is ``generate_sample(spec, seed, j, stream=VAL_STREAM)`` (separate seed
    namespace, never equal to a training sample).  Labels index ``class_names``; the COCO
    category id of label ``l`` is ``category_ids[l] == l + 1``.
    """

    def __init__(self, spec: ShapesSpec = STANDARD_SHAPES, seed: int = 0, num_val: int = 500):
        if seed < 0 or num_val < 0:
            raise ValueError(f"seed and num_val must be >= 0, got {seed}, {num_val}")
        self.spec = spec
        self.seed = seed
        self.num_val = num_val
        self._val: list[dict] | None = None

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        """COCO category id per contiguous label: ``category_ids[label] == label + 1``."""
        return tuple(range(1, self.num_classes + 1))

    def coco_categories(self) -> list[dict]:
        """COCO ``categories`` entries (id, name, supercategory)."""
        return coco_categories(self.class_names)

    def train_sample(self, index: int) -> dict:
        return generate_sample(self.spec, self.seed, index)

    def val_sample(self, index: int) -> dict:
        return generate_sample(self.spec, self.seed, index, stream=VAL_STREAM)

    def train_samples(
        self, start_index: int = 0, process_index: int = 0, process_count: int = 1
    ) -> Iterator[dict]:
        """Infinite iterator over this process's share of the global training stream.

        Yields the samples with global index ``i >= start_index`` and
        ``i % process_count == process_index``, in increasing ``i`` (``image_id == i``).
        To resume after ``k`` global samples were consumed, pass ``start_index=k``.
        """
        if not 0 <= process_index < process_count:
            raise ValueError(f"need 0 <= process_index < process_count, got "
                             f"{process_index}, {process_count}")
        first = start_index + (process_index - start_index) % process_count
        for i in itertools.count(first, process_count):
            yield self.train_sample(i)

    def val_samples(self) -> list[dict]:
        """The fixed list of ``num_val`` validation samples (generated once, then cached)."""
        if self._val is None:
            self._val = [self.val_sample(j) for j in range(self.num_val)]
        return self._val


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export the synthetic shapes dataset as COCO.")
    parser.add_argument("--export", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=("train", "val"),
                        help="train: training stream indices 0..N-1; val: validation stream")
    parser.add_argument("--spec", default="standard",
                        help="shapes variant (config field shapes.spec): standard | plain")
    parser.add_argument("--category-ids", default="",
                        help="comma-separated COCO ids, one per class (default 1..K)")
    args = parser.parse_args(argv)
    from detr_jax.data import SHAPES_SPECS  # the package imports this module

    if args.spec not in SHAPES_SPECS:
        parser.error(f"--spec={args.spec!r}; choose one of {tuple(SHAPES_SPECS)}")
    spec = SHAPES_SPECS[args.spec]
    ids = [int(i) for i in args.category_ids.split(",")] if args.category_ids else None
    stream = VAL_STREAM if args.split == "val" else TRAIN_STREAM
    samples = [generate_sample(spec, args.seed, i, stream=stream)
               for i in range(args.num_images)]
    path = export_coco(samples, args.export, spec.class_names, ids)
    n_ann = sum(len(s["labels"]) for s in samples)
    print(f"shapes: wrote {len(samples)} images, {n_ann} annotations "
          f"(spec={args.spec}, split={args.split}, seed={args.seed}) to {path}")


if __name__ == "__main__":
    main()
