"""Mask utilities (pure ``jax.numpy``; jit/vmap friendly).

Masks are boolean maps [..., h, w] on a canvas whose cell (i, j) covers the input pixels
[stride * i, stride * (i + 1)) x [stride * j, stride * (j + 1)) (stride 4 for the mask logits
of MaskFormer-style heads, 1 for full-resolution masks); the image sits at the top-left of the
canvas, so its real extent is a (height, width) in pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masks_to_boxes(masks: jax.Array, image_size: jax.Array, stride: int = 1) -> jax.Array:
    """The bounding box of each mask, normalised cxcywh relative to the real image.

    Args:
      masks: bool [..., h, w] (True = inside), e.g. `pred_masks > 0` (probability > 0.5).
      image_size: [..., 2] real (height, width) in input pixels, broadcastable against the
        masks' leading dimensions (e.g. [1, B, 1, 2] for masks [L, B, Q, h, w]). Cells that
        start at or beyond it (the padding) are ignored.
      stride: input pixels per mask cell.

    Returns:
      float32 [..., 4] normalised cxcywh: the union of the mask's cells inside the image, in
      pixels (x0 = stride * first column, x1 = stride * (last column + 1), likewise y), clipped
      to the image and divided by its width and height. An empty mask (no cell inside the
      image, also every mask of a zero-size filler image) gives all zeros (0, 0, 0, 0).
      Not differentiable (boolean input): callers treat it as a stop-gradient quantity.
    """
    if masks.ndim < 2:
        raise ValueError(f"masks_to_boxes: masks must be [..., h, w], got shape {masks.shape}")
    h, w = masks.shape[-2:]
    size = jnp.asarray(image_size, jnp.float32)
    if size.shape[-1] != 2:
        raise ValueError(f"masks_to_boxes: image_size must end in (h, w), got {size.shape}")
    real_h, real_w = size[..., 0], size[..., 1]
    row_start = stride * jnp.arange(h, dtype=jnp.float32)
    col_start = stride * jnp.arange(w, dtype=jnp.float32)
    inside = ((row_start < real_h[..., None])[..., :, None]
              & (col_start < real_w[..., None])[..., None, :])  # [..., h, w]
    masks = masks & inside
    rows, cols = jnp.any(masks, axis=-1), jnp.any(masks, axis=-2)  # [..., h], [..., w]

    def extent(hit: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        idx = jnp.arange(n)
        first = jnp.min(jnp.where(hit, idx, n), axis=-1)
        last = jnp.max(jnp.where(hit, idx, -1), axis=-1)
        return first.astype(jnp.float32), last.astype(jnp.float32)

    y_first, y_last = extent(rows, h)
    x_first, x_last = extent(cols, w)
    nonempty = jnp.any(rows, axis=-1) & jnp.any(cols, axis=-1)
    safe_h, safe_w = jnp.maximum(real_h, 1.0), jnp.maximum(real_w, 1.0)
    y0 = stride * y_first / safe_h
    y1 = jnp.minimum(stride * (y_last + 1), real_h) / safe_h
    x0 = stride * x_first / safe_w
    x1 = jnp.minimum(stride * (x_last + 1), real_w) / safe_w
    boxes = jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)
    return jnp.where(nonempty[..., None], boxes, 0.0)


def real_image_size(pixel_mask: jax.Array) -> jax.Array:
    """pixel_mask bool [B, H, W] (True on real pixels, image at the top-left) -> float32 [B, 2]:
    the real (height, width) in pixels (rows / columns with any real pixel)."""
    h = jnp.sum(jnp.any(pixel_mask, axis=2), axis=1)
    w = jnp.sum(jnp.any(pixel_mask, axis=1), axis=1)
    return jnp.stack([h, w], axis=-1).astype(jnp.float32)
