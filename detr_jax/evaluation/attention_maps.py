"""Attention maps drawn over images (seed 003, section 17: where each object query looks).

`attention` maps are float [h, w] over the real feature positions of an image whose feature
stride is `stride` (32, or 16 with DC5); they are upsampled to the image and blended as a heat map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from detr_jax.evaluation.visualize import draw_detections


def heat_overlay(image: np.ndarray, attention: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """uint8 [H, W, 3] image and float [h, w] attention -> uint8 [H, W, 3] blend.

    The map is min-max normalised, resized bilinearly to (h * s, w * s) with s = ceil(H / h)
    (the feature stride), cropped to [H, W], and shown black -> red -> yellow.
    """
    h_img, w_img = image.shape[:2]
    a = np.asarray(attention, np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    stride = -(-h_img // a.shape[0])
    up = Image.fromarray(a).resize((a.shape[1] * stride, a.shape[0] * stride), Image.BILINEAR)
    a = np.asarray(up)[:h_img, :w_img]
    heat = np.stack([np.clip(2 * a, 0, 1), np.clip(2 * a - 1, 0, 1), np.zeros_like(a)], -1)
    out = (1 - alpha) * image.astype(np.float32) + alpha * 255.0 * heat
    return np.clip(out, 0, 255).astype(np.uint8)


def draw_query_attention(
    image: np.ndarray,
    attention: np.ndarray,
    box: np.ndarray,
    label: int,
    score: float,
    class_names: Sequence[str],
) -> np.ndarray:
    """One kept query: its cross-attention [h, w] as a heat map, with its xyxy pixel box."""
    blended = heat_overlay(image, attention)
    return draw_detections(
        blended,
        np.asarray(box)[None],
        np.array([label]),
        np.array([score]),
        class_names,
        score_threshold=0.0,
    )


def draw_point_attention(
    image: np.ndarray, attention: np.ndarray, point: tuple[float, float]
) -> np.ndarray:
    """An encoder self-attention map [h, w] of one position, the position marked by a cross."""
    out = heat_overlay(image, attention).copy()
    y, x = int(round(point[0])), int(round(point[1]))
    h, w = out.shape[:2]
    r = max(2, min(h, w) // 30)
    out[max(y - r, 0) : y + r + 1, min(max(x, 0), w - 1)] = (0, 255, 255)
    out[min(max(y, 0), h - 1), max(x - r, 0) : x + r + 1] = (0, 255, 255)
    return draw_detections(out, np.zeros((0, 4)), np.zeros(0, int), np.zeros(0), [])
