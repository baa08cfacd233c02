"""Bounding-box utilities (pure ``jax.numpy``; jit/vmap friendly).

Box formats
- ``cxcywh``: (centre x, centre y, width, height).
- ``xyxy``:   (x0, y0, x1, y1) corners, x0 <= x1 and y0 <= y1 for a proper box.

All functions are agnostic to the scale (normalised or pixels), as long as both
arguments use the same one. They accept any leading batch dimensions.

Robustness: degenerate (zero-area) and inverted boxes (x1 < x0 or y1 < y0) never
produce NaN or inf, neither in values nor in gradients. Widths and heights are
clamped at 0 (an inverted box has area 0) and every division uses a denominator
bounded below by a tiny epsilon, so there is no 0/0 anywhere in the graph and the
reverse-mode derivatives stay finite. Results are clipped to their mathematical
ranges (IoU in [0, 1], GIoU in [-1, 1]) to absorb floating-point rounding.
"""

from __future__ import annotations

import jax.numpy as jnp

# Smallest denominator used in IoU / GIoU divisions (same role as the eps of
# mmdet's bbox_overlaps). Negligible for real boxes (a 1x1 pixel box in a 1333x800
# image has normalised area ~1e-6) but keeps 0/0 away and bounds the gradients of
# degenerate boxes (at most ~1/_EPS).
_EPS = 1e-7


def box_cxcywh_to_xyxy(boxes: jnp.ndarray) -> jnp.ndarray:
    """Convert ``cxcywh`` boxes [..., 4] to ``xyxy`` boxes [..., 4] (same scale)."""
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes: jnp.ndarray) -> jnp.ndarray:
    """Convert ``xyxy`` boxes [..., 4] to ``cxcywh`` boxes [..., 4] (same scale)."""
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x0 + x1) * 0.5, (y0 + y1) * 0.5, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: jnp.ndarray) -> jnp.ndarray:
    """Area of ``xyxy`` boxes [..., 4] -> [...]; inverted boxes get area 0."""
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def _safe_div(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    """``num / max(den, eps)``; finite value and gradient for den >= 0."""
    return num / jnp.maximum(den, _EPS)


def _iou_parts(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Intersection, union and enclosing-box area of broadcastable ``xyxy`` boxes.

    ``a`` and ``b`` are [..., 4] and must broadcast against each other; the three
    outputs have the broadcast shape without the last axis.
    """
    area_a = box_area(a)
    area_b = box_area(b)
    lt = jnp.maximum(a[..., :2], b[..., :2])
    rb = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    # Smallest box enclosing both. Inverted inputs can make it inverted too: clamp.
    lt_c = jnp.minimum(a[..., :2], b[..., :2])
    rb_c = jnp.maximum(a[..., 2:], b[..., 2:])
    wh_c = jnp.maximum(rb_c - lt_c, 0.0)
    enclose = wh_c[..., 0] * wh_c[..., 1]
    return inter, union, enclose


def _giou_from_parts(inter: jnp.ndarray, union: jnp.ndarray, enclose: jnp.ndarray) -> jnp.ndarray:
    iou = jnp.clip(_safe_div(inter, union), 0.0, 1.0)
    # enclose >= union for proper boxes; clamp the gap so rounding cannot push it < 0.
    gap = jnp.maximum(enclose - union, 0.0)
    return jnp.clip(iou - _safe_div(gap, enclose), -1.0, 1.0)


def pairwise_iou(a: jnp.ndarray, b: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Pairwise IoU between two sets of ``xyxy`` boxes.

    Args:
      a: [..., N, 4] ``xyxy`` boxes.
      b: [..., M, 4] ``xyxy`` boxes (same scale; leading dims broadcast with ``a``).

    Returns:
      ``(iou, union)``, both [..., N, M]. ``iou`` is in [0, 1]; it is 0 when the
      union is empty (two zero-area boxes).
    """
    inter, union, _ = _iou_parts(a[..., :, None, :], b[..., None, :, :])
    return jnp.clip(_safe_div(inter, union), 0.0, 1.0), union


def pairwise_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Pairwise generalised IoU (Rezatofighi et al., 2019) of ``xyxy`` boxes.

    Args:
      a: [..., N, 4] ``xyxy`` boxes.
      b: [..., M, 4] ``xyxy`` boxes (same scale; leading dims broadcast with ``a``).

    Returns:
      [..., N, M] GIoU in [-1, 1]; equals IoU when one box contains the other.
    """
    inter, union, enclose = _iou_parts(a[..., :, None, :], b[..., None, :, :])
    return _giou_from_parts(inter, union, enclose)


def elementwise_giou(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """GIoU of matched pairs of ``xyxy`` boxes.

    Args:
      a: [..., 4] ``xyxy`` boxes.
      b: [..., 4] ``xyxy`` boxes, broadcastable with ``a``.

    Returns:
      [...] GIoU in [-1, 1] of ``a[i]`` with ``b[i]``.
    """
    return _giou_from_parts(*_iou_parts(a, b))


def inverse_sigmoid(x: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
    """logit(x) for x in [0, 1] (clipped), with both x and 1 - x floored at `eps`, as Deformable
    DETR's `inverse_sigmoid` (boxes in (0, 1) -> unbounded coordinates for refinement)."""
    x = jnp.clip(x, 0.0, 1.0)
    return jnp.log(jnp.maximum(x, eps) / jnp.maximum(1.0 - x, eps))
