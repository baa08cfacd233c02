"""The synthetic panoptic dataset "shapes_panoptic": shapes (things) on textured stuff regions.

A pure function of ``(seed, index)``, like detr_jax/data/shapes.py, whose object placement it
reuses (:func:`detr_jax.data.shapes.place_objects`).  The background is split into 2-3 stuff
regions by a Voronoi partition of warped coordinates (wavy borders), each region a different
stuff class with its own texture (sky: gradient, ground: dots, wall: stripes, water: waves,
foliage: blocky colour noise; colours random per image, the pattern names the class).  The
shapes are drawn on top with hard (binary) edges, then pixel noise is added.

Category space: labels ``0..T-1`` are the things (the shape classes), ``T..T+S-1`` the stuff
classes; ``category_ids[label] == label + 1``; ``is_thing[label]`` says which.

Per-image sample (docs/interfaces.md, "Segmentation"):

- ``image`` uint8 [S, S, 3]; ``image_id``; ``orig_size`` int32 [2]
- ``boxes`` float32 [N, 4] xyxy **pixels**, the bbox of each segment's *visible* mask (``x1``,
  ``y1`` one past the last pixel); ``labels`` int32 [N]; ``masks`` bool [N, S, S];
  ``is_thing`` bool [N]; ``iscrowd`` bool [N] (all False).  The things come first (drawing
  order), then the stuff segments (by label).
- ``panoptic``: ``ids`` int32 [S, S] (segment id ``k + 1`` for target ``k``) and ``segments``
  [{``id``, ``category_id`` (contiguous label), ``iscrowd``, ``area``, ``bbox`` [x, y, w, h]}].

No VOID: the stuff regions partition the image and the things are drawn without anti-aliasing,
so every pixel belongs to exactly one segment (``ids`` is never 0).  A stuff region wholly
covered by things has no segment (its pixels belong to the things).

CLI (COCO panoptic + instance files, detr_jax/data/panoptic_export.py)::

    python -m detr_jax.data.shapes_panoptic --export DIR --num-images N [--seed S]
        [--split train|val] [--spec standard|plain]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from detr_jax.data.shapes import (
    STANDARD_SHAPES,
    TRAIN_STREAM,
    VAL_STREAM,
    ShapesDataset,
    ShapesSpec,
    _grid,
    add_noise,
    place_objects,
)

STUFF_NAMES: tuple[str, ...] = ("sky", "ground", "wall", "water", "foliage")
_STUFF_STREAM = 7  # entropy of the partition's own retries (keeps the main stream fixed)


@dataclass(frozen=True)
class PanopticShapesSpec:
    """Generator parameters: ``things`` (a ShapesSpec; its line / blob / gradient fields are not
    used) and the stuff: ``num_stuff`` (inclusive range of regions per image, distinct
    classes), ``min_stuff_fraction`` (smallest region, fraction of the image, before the
    things), ``wave`` (border waviness, fraction of the image side), ``texture_contrast``
    (RGB distance between a texture's two colours)."""

    things: ShapesSpec = dataclasses.replace(STANDARD_SHAPES, num_lines=(0, 0), num_blobs=(0, 0))
    stuff_names: tuple[str, ...] = STUFF_NAMES
    num_stuff: tuple[int, int] = (2, 3)
    min_stuff_fraction: float = 0.1
    wave: float = 0.08
    texture_contrast: float = 45.0

    def __post_init__(self) -> None:
        unknown = set(self.stuff_names) - set(STUFF_NAMES)
        if unknown:
            raise ValueError(f"unknown stuff classes {sorted(unknown)}; known: {STUFF_NAMES}")
        if len(set(self.stuff_names)) != len(self.stuff_names):
            raise ValueError(f"stuff_names must be distinct: {self.stuff_names}")
        if not 1 <= self.num_stuff[0] <= self.num_stuff[1] <= len(self.stuff_names):
            raise ValueError(f"need 1 <= num_stuff[0] <= num_stuff[1] <= {len(self.stuff_names)}"
                             f" (the stuff classes), got num_stuff={self.num_stuff}")
        if not 0 <= self.min_stuff_fraction * self.num_stuff[1] <= 1:
            raise ValueError(f"min_stuff_fraction={self.min_stuff_fraction} is too large for "
                             f"{self.num_stuff[1]} regions")

    @property
    def image_size(self) -> int:
        return self.things.image_size

    @property
    def num_things(self) -> int:
        return self.things.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.things.class_names + self.stuff_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_thing(self) -> tuple[bool, ...]:
        return (True,) * self.num_things + (False,) * len(self.stuff_names)


STANDARD_PANOPTIC = PanopticShapesSpec()
PANOPTIC_SPECS = {
    "standard": STANDARD_PANOPTIC,
    # Easier: 4 shape classes, 3 stuff classes, always 2 regions.
    "plain": PanopticShapesSpec(
        things=dataclasses.replace(STANDARD_SHAPES, class_names=("circle", "square", "triangle",
                                   "cross"), num_lines=(0, 0), num_blobs=(0, 0)),
        stuff_names=("sky", "ground", "wall"), num_stuff=(2, 2)),
}


def _colour_pair(contrast: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random base colour and a second one about ``contrast`` away (float32 [3] each)."""
    c0 = rng.uniform(contrast / 2, 255 - contrast / 2, 3).astype(np.float32)
    d = rng.normal(size=3)
    d = d / max(float(np.linalg.norm(d)), 1e-6) * contrast
    return c0, np.clip(c0 + d, 0, 255).astype(np.float32)


def _texture(name: str, size: int, contrast: float, rng: np.random.Generator) -> np.ndarray:
    """The full-image texture of stuff class ``name``, float32 [S, S, 3]."""
    c0, c1 = _colour_pair(contrast, rng)
    yy, xx = _grid(size)
    if name == "sky":  # smooth gradient, mostly vertical
        a = rng.uniform(0.35, 0.65) * math.pi
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif name == "ground":  # dots of the second colour
        pil = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(pil)
        for x, y in rng.uniform(0, size, (size * size // 30, 2)):
            r = rng.uniform(0.8, 1.8)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
        t = np.asarray(pil, np.float32)
    elif name == "wall":  # straight stripes
        a = rng.uniform(0, math.pi)
        period = rng.uniform(5, 9)
        t = ((xx * math.cos(a) + yy * math.sin(a)) % period < period / 2).astype(np.float32)
    elif name == "water":  # smooth waves
        a = rng.uniform(0, math.pi)
        period, bend = rng.uniform(6, 12), rng.uniform(1, 3)
        u = xx * math.cos(a) + yy * math.sin(a)
        v = -xx * math.sin(a) + yy * math.cos(a)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / period + bend * np.sin(2 * math.pi * v / size))
    elif name == "foliage":  # blocky colour noise
        cell = int(rng.integers(4, 8))
        coarse = rng.random((size // cell + 1, size // cell + 1)).astype(np.float32)
        t = np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:size, :size]
    else:
        raise ValueError(f"unknown stuff class {name!r}")
    return c0 + t[..., None] * (c1 - c0)


def stuff_partition(spec: PanopticShapesSpec, k: int, rng: np.random.Generator) -> np.ndarray:
    """Region index int32 [S, S] in 0..k-1, each region at least ``min_stuff_fraction`` of the
    image: nearest of k random seeds in coordinates warped by two sinusoids (wavy borders).
    Falls back to k horizontal bands after 20 draws that leave a region too small."""
    size = spec.image_size
    yy, xx = _grid(size)
    need = spec.min_stuff_fraction * size * size
    for _ in range(20):
        seeds = rng.uniform(0, size, (k, 2))
        amp = spec.wave * size
        fx, fy = rng.uniform(1, 3, 2)
        px, py = rng.uniform(0, 2 * math.pi, 2)
        wx = xx + amp * np.sin(2 * math.pi * fy * yy / size + py)
        wy = yy + amp * np.sin(2 * math.pi * fx * xx / size + px)
        d = (wx[None] - seeds[:, 0, None, None]) ** 2 + (wy[None] - seeds[:, 1, None, None]) ** 2
        region = np.argmin(d, axis=0).astype(np.int32)
        if np.bincount(region.reshape(-1), minlength=k).min() >= need:
            return region
    return np.minimum(yy.astype(np.int32) * k // size, k - 1)


def _bbox(mask: np.ndarray) -> np.ndarray:
    """xyxy pixel box float32 [4] of a non-empty bool mask [H, W] (x1, y1 one past the end)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def panoptic_of(masks: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray) -> dict:
    """``panoptic`` entry {ids int32 [H, W], segments} of disjoint masks bool [N, H, W]: target
    k gets segment id k + 1; pixels of no mask are 0 (VOID)."""
    n, h, w = masks.shape
    ids = np.zeros((h, w), np.int32)
    segments = []
    for k in range(n):
        ids[masks[k]] = k + 1
        x0, y0, x1, y1 = (float(v) for v in _bbox(masks[k])) if masks[k].any() else (0,) * 4
        segments.append({"id": k + 1, "category_id": int(labels[k]), "iscrowd": int(iscrowd[k]),
                         "area": int(masks[k].sum()), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return {"ids": ids, "segments": segments}


def generate_panoptic_sample(
    spec: PanopticShapesSpec, seed: int, index: int, *, stream: int = TRAIN_STREAM
) -> dict:
    """Sample ``index`` of the stream ``(seed, stream)`` (module docstring); a pure function of
    its arguments, drawn from ``np.random.default_rng([seed, index, stream, 1])``."""
    rng = np.random.default_rng([seed, index, stream, 1])
    size = spec.image_size
    k = int(rng.integers(spec.num_stuff[0], spec.num_stuff[1] + 1))
    stuff = np.sort(rng.choice(len(spec.stuff_names), k, replace=False))
    region = stuff_partition(spec, k, np.random.default_rng([seed, index, stream, _STUFF_STREAM]))
    canvas = np.zeros((size, size, 3), np.float32)
    for r, s in enumerate(stuff):
        tex = _texture(spec.stuff_names[s], size, spec.texture_contrast, rng)
        canvas[region == r] = tex[region == r]
    _, thing_labels, visible = place_objects(spec.things, canvas, rng)
    image = add_noise(canvas, spec.things.noise_std, rng)

    covered = np.any(visible, axis=0) if visible else np.zeros((size, size), bool)
    masks = list(visible)
    labels = list(thing_labels)
    for r, s in enumerate(stuff):
        m = (region == r) & ~covered
        if m.any():
            masks.append(m)
            labels.append(spec.num_things + int(s))
    n = len(masks)
    masks_a = np.stack(masks) if n else np.zeros((0, size, size), bool)
    labels_a = np.asarray(labels, np.int32).reshape(n)
    iscrowd = np.zeros(n, bool)
    return {
        "image": image,
        "boxes": np.stack([_bbox(m) for m in masks]) if n else np.zeros((0, 4), np.float32),
        "labels": labels_a,
        "masks": masks_a,
        "is_thing": labels_a < spec.num_things,
        "iscrowd": iscrowd,
        "panoptic": panoptic_of(masks_a, labels_a, iscrowd),
        "image_id": int(index),
        "orig_size": np.array([size, size], np.int32),
    }


class ShapesPanopticDataset(ShapesDataset):
    """Train stream and fixed validation set of shapes_panoptic (ShapesDataset's streams and
    sharding; training sample ``i`` is ``generate_panoptic_sample(spec, seed, i)``, validation
    sample ``j`` the same with ``stream=VAL_STREAM``).  ``is_thing[label]`` per class."""

    def __init__(self, spec: PanopticShapesSpec = STANDARD_PANOPTIC, seed: int = 0,
                 num_val: int = 500):
        super().__init__(spec, seed, num_val)  # type: ignore[arg-type]

    @property
    def is_thing(self) -> tuple[bool, ...]:
        return self.spec.is_thing

    def panoptic_categories(self) -> list[dict]:
        """COCO panoptic ``categories``: [{id, name, supercategory, isthing}]."""
        from detr_jax.data.panoptic_export import panoptic_categories

        return panoptic_categories(self.class_names, self.category_ids, self.is_thing)

    def train_sample(self, index: int) -> dict:
        return generate_panoptic_sample(self.spec, self.seed, index)

    def val_sample(self, index: int) -> dict:
        return generate_panoptic_sample(self.spec, self.seed, index, stream=VAL_STREAM)

    def coco_ground_truth(self) -> dict:
        """Instance ground truth of the validation things (COCO dict with RLE segmentations,
        thing categories only: box / mask AP are over things, as COCO's)."""
        from detr_jax.data.panoptic_export import things_ground_truth

        return things_ground_truth(self.val_samples(), self.class_names, self.category_ids,
                                   self.is_thing)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Export shapes_panoptic as COCO panoptic (PNG + JSON) and instance files.")
    parser.add_argument("--export", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--spec", default="standard", choices=tuple(PANOPTIC_SPECS))
    args = parser.parse_args(argv)
    from detr_jax.data.panoptic_export import export_coco_panoptic

    ds = ShapesPanopticDataset(PANOPTIC_SPECS[args.spec], args.seed, 0)
    sample = ds.val_sample if args.split == "val" else ds.train_sample
    samples = [sample(i) for i in range(args.num_images)]
    paths = export_coco_panoptic(samples, args.export, ds.class_names, ds.category_ids,
                                 ds.is_thing)
    n_seg = sum(len(s["labels"]) for s in samples)
    print(f"shapes_panoptic: wrote {len(samples)} images, {n_seg} segments (spec={args.spec}, "
          f"split={args.split}, seed={args.seed}) to {', '.join(paths)}")


if __name__ == "__main__":
    main()
