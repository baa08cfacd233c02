"""Box-aware augmentations from seed 000, section 13 (all off by default), on numpy samples.

Samples as in docs/interfaces.md: ``image`` uint8 [H, W, 3], ``boxes`` float32 [N, 4] **xyxy
pixels**, ``labels`` int32 [N].  Each function returns a new sample and leaves its input alone.

- :func:`rand_augment`: ``num_ops`` ops drawn from colour ops (boxes unchanged) and geometric ops
  (translate, shear, rotate: the box corners are mapped and the enclosing box is clipped to the
  image; boxes that leave the image are dropped), at magnitude ``m`` of 0..10.
- :func:`mixup`: the other image is resized to this one (boxes scaled), blended with weight
  ``lam ~ Beta(alpha, alpha)``; the targets are the union of both.
- :func:`cutmix`: a rectangle of area fraction ``1 - lam`` from the other image is pasted; this
  image's boxes covered more than ``max_covered`` are dropped, the pasted boxes are clipped to the
  rectangle (and dropped when less than ``1 - max_covered`` of them remains).
- :func:`random_erasing`: a random rectangle is filled with noise; boxes covered more than
  ``max_covered`` are dropped.

Masks (optional ``masks`` bool [N, H, W], with ``is_thing`` / ``iscrowd`` [N]) stay aligned:
geometric ops map them with the same affine (nearest), Mixup resizes the other sample's masks
(nearest) and keeps both sets, CutMix removes the pasted rectangle from this sample's masks and
keeps the other's only inside it, erasing removes the erased rectangle (masks are *visible*
masks); a target whose mask ends up empty is dropped with its box.

:func:`make_augment` turns ``config.augment`` into the ``(sample, rng, other) -> sample`` hook the
datasets call before the DETR transforms (``other()`` returns a second raw sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from detr_jax.data.transforms import PER_BOX_KEYS, resize_masks, select_boxes

COLOUR_OPS = ("identity", "autocontrast", "equalize", "brightness", "contrast", "color",
              "sharpness", "posterize", "solarize")
GEOMETRIC_OPS = ("translate_x", "translate_y", "shear_x", "shear_y", "rotate")


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def covered_fraction(boxes: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Fraction of each xyxy box [N, 4] inside the xyxy rectangle ``rect`` (0 for empty boxes)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    inter = np.stack([np.maximum(b[:, 0], rect[0]), np.maximum(b[:, 1], rect[1]),
                      np.minimum(b[:, 2], rect[2]), np.minimum(b[:, 3], rect[3])], axis=1)
    return _area(inter) / np.maximum(_area(b), 1e-9)


def affine_boxes(boxes: np.ndarray, matrix: np.ndarray, h: int, w: int) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """Map xyxy boxes [N, 4] by the 2x3 forward ``matrix`` (x' = A @ [x, y, 1]); returns the
    clipped enclosing boxes [N, 4] and a keep mask [N] (positive width and height)."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)
    pts = corners @ matrix[:, :2].T + matrix[:, 2]
    out = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)
    out = np.clip(out, 0, np.array([w, h, w, h], np.float32)).astype(np.float32)
    return out, (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])


def _with_masks(sample: dict, keep: np.ndarray) -> np.ndarray:
    """``keep`` [N] and, when the sample has masks, a non-empty mask."""
    if "masks" not in sample:
        return keep
    return keep & np.asarray(sample["masks"]).any(axis=(1, 2))


def _cut_masks(sample: dict, rect: tuple[int, int, int, int], inside: bool) -> dict:
    """``sample`` with its masks kept only inside (``inside``) or only outside the xyxy
    integer rectangle ``rect``; the sample itself when it has no masks."""
    if "masks" not in sample:
        return sample
    x0, y0, x1, y1 = rect
    masks = np.asarray(sample["masks"], bool)
    window = np.zeros(masks.shape[1:], bool)
    window[y0:y1, x0:x1] = True
    return dict(sample, masks=masks & (window if inside else ~window))


def _geometric(sample: dict, op: str, level: float, rng: np.random.Generator) -> dict:
    """Apply one geometric op; level in [0, 1] with a random sign."""
    img = sample["image"]
    h, w = img.shape[:2]
    sign = 1.0 if rng.random() < 0.5 else -1.0
    fwd = np.eye(3, dtype=np.float64)
    if op == "translate_x":
        fwd[0, 2] = sign * level * 0.3 * w
    elif op == "translate_y":
        fwd[1, 2] = sign * level * 0.3 * h
    elif op == "shear_x":
        fwd[0, 1] = sign * level * 0.3
        fwd[0, 2] = -fwd[0, 1] * h / 2  # shear about the centre
    elif op == "shear_y":
        fwd[1, 0] = sign * level * 0.3
        fwd[1, 2] = -fwd[1, 0] * w / 2
    elif op == "rotate":
        a = math.radians(sign * level * 30.0)
        c, s = math.cos(a), math.sin(a)
        cx, cy = w / 2, h / 2
        fwd[:2, :2] = [[c, -s], [s, c]]
        fwd[:2, 2] = [cx - c * cx + s * cy, cy - s * cx - c * cy]
    else:
        raise ValueError(f"unknown geometric op {op!r}")
    inv = np.linalg.inv(fwd)  # PIL maps output pixels to input pixels
    pil = Image.fromarray(img).transform(
        (w, h), Image.Transform.AFFINE, tuple(inv[:2].reshape(-1)), Image.Resampling.BILINEAR,
        fillcolor=(124, 116, 104))
    boxes, keep = affine_boxes(sample["boxes"], fwd[:2].astype(np.float32), h, w)
    out = dict(sample, image=np.asarray(pil), boxes=boxes)
    if "masks" in sample:
        coeffs = tuple(inv[:2].reshape(-1))
        moved = [np.asarray(Image.fromarray(m.astype(np.uint8)).transform(
            (w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.NEAREST, fillcolor=0))
            for m in np.asarray(sample["masks"], bool)]
        out["masks"] = np.stack(moved).astype(bool) if moved else np.zeros((0, h, w), bool)
    return select_boxes(out, _with_masks(out, keep))


def _colour(image: np.ndarray, op: str, level: float, rng: np.random.Generator) -> np.ndarray:
    pil = Image.fromarray(image)
    factor = 1.0 + (level * 0.9 if rng.random() < 0.5 else -level * 0.9)
    if op == "identity":
        return image
    if op == "autocontrast":
        pil = ImageOps.autocontrast(pil)
    elif op == "equalize":
        pil = ImageOps.equalize(pil)
    elif op == "brightness":
        pil = ImageEnhance.Brightness(pil).enhance(factor)
    elif op == "contrast":
        pil = ImageEnhance.Contrast(pil).enhance(factor)
    elif op == "color":
        pil = ImageEnhance.Color(pil).enhance(factor)
    elif op == "sharpness":
        pil = ImageEnhance.Sharpness(pil).enhance(factor)
    elif op == "posterize":
        pil = ImageOps.posterize(pil, 8 - int(round(level * 4)))
    elif op == "solarize":
        pil = ImageOps.solarize(pil, 256 - int(round(level * 256)))
    else:
        raise ValueError(f"unknown colour op {op!r}")
    return np.asarray(pil)


def rand_augment(sample: dict, rng: np.random.Generator, num_ops: int = 2,
                 magnitude: float = 9.0) -> dict:
    """RandAugment: ``num_ops`` ops drawn uniformly from colour + geometric ops, magnitude 0..10."""
    ops = COLOUR_OPS + GEOMETRIC_OPS
    level = float(np.clip(magnitude, 0, 10)) / 10.0
    for _ in range(num_ops):
        op = ops[int(rng.integers(len(ops)))]
        if op in GEOMETRIC_OPS:
            sample = _geometric(sample, op, level, rng)
        else:
            sample = dict(sample, image=_colour(sample["image"], op, level, rng))
    return sample


def _resize_to(other: dict, h: int, w: int) -> dict:
    oh, ow = other["image"].shape[:2]
    image = other["image"]
    if (oh, ow) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    scale = np.array([w / ow, h / oh, w / ow, h / oh], np.float32)
    out = {"image": image, "labels": np.asarray(other["labels"], np.int32),
           "boxes": np.asarray(other["boxes"], np.float32).reshape(-1, 4) * scale}
    for k in _UNION_KEYS:
        if k in other:
            out[k] = np.asarray(other[k])
    if "masks" in other:
        out["masks"] = resize_masks(other["masks"], h, w)
    return out


# Per-target fields that a union of two samples' targets concatenates (when both have them).
_UNION_KEYS = ("masks", "is_thing", "iscrowd")


def _union(sample: dict, image: np.ndarray, other: dict) -> dict:
    """This sample's non-target fields with ``image`` and the targets of both samples."""
    if ("masks" in sample) != ("masks" in other):
        raise ValueError(f"image {sample.get('image_id')}: Mixup/CutMix of a sample with masks "
                         "and one without")
    out = {k: v for k, v in sample.items() if k not in PER_BOX_KEYS}
    out["image"] = image
    out["boxes"] = np.concatenate([np.asarray(sample["boxes"], np.float32).reshape(-1, 4),
                                   np.asarray(other["boxes"], np.float32).reshape(-1, 4)])
    out["labels"] = np.concatenate([np.asarray(sample["labels"], np.int32),
                                    np.asarray(other["labels"], np.int32)])
    for k in _UNION_KEYS:
        if k in sample and k in other:
            out[k] = np.concatenate([np.asarray(sample[k]), np.asarray(other[k])])
    return out


def mixup(sample: dict, other: dict, rng: np.random.Generator, alpha: float = 1.5) -> dict:
    """Blend ``lam * image + (1 - lam) * other`` (other resized); targets: union of both."""
    h, w = sample["image"].shape[:2]
    o = _resize_to(other, h, w)
    lam = float(rng.beta(alpha, alpha))
    image = lam * sample["image"].astype(np.float32) + (1 - lam) * o["image"].astype(np.float32)
    return _union(sample, np.clip(np.rint(image), 0, 255).astype(np.uint8), o)


def _random_rect(h: int, w: int, frac: float, rng: np.random.Generator) -> tuple[int, ...]:
    """An xyxy integer rectangle of about ``frac`` of the image area, centred at random."""
    rw, rh = int(w * math.sqrt(frac)), int(h * math.sqrt(frac))
    cx, cy = int(rng.integers(w)), int(rng.integers(h))
    x0, x1 = np.clip([cx - rw // 2, cx + rw // 2], 0, w)
    y0, y1 = np.clip([cy - rh // 2, cy + rh // 2], 0, h)
    return int(x0), int(y0), int(x1), int(y1)


def cutmix(sample: dict, other: dict, rng: np.random.Generator, alpha: float = 1.0,
           max_covered: float = 0.7) -> dict:
    """Paste a rectangle of the (resized) other image; see the module docstring for boxes."""
    h, w = sample["image"].shape[:2]
    o = _resize_to(other, h, w)
    x0, y0, x1, y1 = _random_rect(h, w, 1.0 - float(rng.beta(alpha, alpha)), rng)
    if x1 <= x0 or y1 <= y0:
        return dict(sample)
    image = sample["image"].copy()
    image[y0:y1, x0:x1] = o["image"][y0:y1, x0:x1]
    rect = (x0, y0, x1, y1)
    kept = _cut_masks(sample, rect, inside=False)
    kept = select_boxes(kept, _with_masks(kept, covered_fraction(sample["boxes"], rect)
                                          <= max_covered))
    inside = covered_fraction(o["boxes"], rect)
    o = _cut_masks(o, rect, inside=True)
    o["boxes"] = np.clip(o["boxes"], [x0, y0, x0, y0], [x1, y1, x1, y1]).astype(np.float32)
    ok = (inside >= 1.0 - max_covered) & (o["boxes"][:, 2] > o["boxes"][:, 0]) & (
        o["boxes"][:, 3] > o["boxes"][:, 1])
    return _union(kept, image, select_boxes(o, _with_masks(o, ok)))


def random_erasing(sample: dict, rng: np.random.Generator, scale: tuple[float, float] = (0.02,
                   0.33), ratio: tuple[float, float] = (0.3, 3.3), max_covered: float = 0.7
                   ) -> dict:
    """Fill a random rectangle (area fraction in ``scale``, aspect in ``ratio``) with noise."""
    h, w = sample["image"].shape[:2]
    area = h * w * float(rng.uniform(*scale))
    aspect = math.exp(float(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))))
    eh = min(h, max(1, int(round(math.sqrt(area * aspect)))))
    ew = min(w, max(1, int(round(math.sqrt(area / aspect)))))
    y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
    image = sample["image"].copy()
    image[y0:y0 + eh, x0:x0 + ew] = rng.integers(0, 256, (eh, ew, 3), dtype=np.uint8)
    rect = (x0, y0, x0 + ew, y0 + eh)
    out = _cut_masks(dict(sample, image=image), rect, inside=False)
    covered = covered_fraction(sample["boxes"], rect)
    return select_boxes(out, _with_masks(out, covered <= max_covered))


AugmentFn = Callable[[dict, np.random.Generator, Callable[[], dict]], dict]


def make_augment(cfg: Any) -> AugmentFn | None:
    """The augmentation hook for ``config.augment`` (None when everything is off)."""
    if not (cfg.randaugment_num_ops > 0 or cfg.mixup_prob > 0 or cfg.cutmix_prob > 0
            or cfg.random_erasing_prob > 0):
        return None

    def augment(sample: dict, rng: np.random.Generator, other: Callable[[], dict]) -> dict:
        if cfg.mixup_prob > 0 and rng.random() < cfg.mixup_prob:
            sample = mixup(sample, other(), rng, cfg.mixup_alpha)
        elif cfg.cutmix_prob > 0 and rng.random() < cfg.cutmix_prob:
            sample = cutmix(sample, other(), rng, cfg.cutmix_alpha, cfg.max_covered)
        if cfg.randaugment_num_ops > 0:
            sample = rand_augment(sample, rng, cfg.randaugment_num_ops, cfg.randaugment_magnitude)
        if cfg.random_erasing_prob > 0 and rng.random() < cfg.random_erasing_prob:
            sample = random_erasing(sample, rng, max_covered=cfg.max_covered)
        return sample

    return augment
