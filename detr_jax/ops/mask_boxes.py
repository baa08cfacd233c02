"""Boxes of predicted masks: the tight box of a binary mask on a strided grid, normalised to the
real (unpadded) image, for mask-only models (MaskFormer / Mask2Former give `pred_boxes` this way,
docs/interfaces.md "Segmentation").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masks_to_boxes(masks: jax.Array, image_hw: jax.Array, stride: int) -> jax.Array:
    """Tight boxes of binary masks on a stride-`stride` grid of the padded canvas.

    Cell (i, j) covers the input pixels [stride * j, stride * (j + 1)) x [stride * i, ...); a
    box spans its mask's cells, clipped to the real image, so it is
    x0 = stride * j_min, x1 = min(stride * (j_max + 1), w_real) (y likewise), then normalised
    by the real width and height. Cells outside the real image are ignored (they are padding).

    Args:
      masks: bool [..., B, Q, h, w] (True = inside the mask), any leading axes (e.g. layers).
      image_hw: [B, 2] (h, w) real image size in input pixels (>= 1).
      stride: input pixels per mask cell (4 for Mask2Former's masks).

    Returns:
      float32 [..., B, Q, 4] normalised cxcywh; (0, 0, 0, 0) for an empty mask.
    """
    h, w = masks.shape[-2:]
    real_hw = jnp.maximum(jnp.asarray(image_hw, jnp.float32), 1.0)  # [B, 2]
    real_h = real_hw[:, 0][:, None, None, None]  # [B, 1, 1, 1] against [..., B, Q, h, w]
    real_w = real_hw[:, 1][:, None, None, None]
    ys = jnp.arange(h, dtype=jnp.float32)[:, None] * stride  # top edge of each row
    xs = jnp.arange(w, dtype=jnp.float32)[None, :] * stride  # left edge of each column
    inside = masks & (ys < real_h) & (xs < real_w)
    rows, cols = jnp.any(inside, axis=-1), jnp.any(inside, axis=-2)  # [..., B, Q, h], [.., w]
    big = jnp.float32(1e9)
    y_pos = jnp.arange(h, dtype=jnp.float32)
    x_pos = jnp.arange(w, dtype=jnp.float32)
    y0 = jnp.min(jnp.where(rows, y_pos, big), axis=-1) * stride
    y1 = (jnp.max(jnp.where(rows, y_pos, -1.0), axis=-1) + 1) * stride
    x0 = jnp.min(jnp.where(cols, x_pos, big), axis=-1) * stride
    x1 = (jnp.max(jnp.where(cols, x_pos, -1.0), axis=-1) + 1) * stride
    rh, rw = real_hw[:, 0][:, None], real_hw[:, 1][:, None]  # [B, 1] against [..., B, Q]
    y1, x1 = jnp.minimum(y1, rh), jnp.minimum(x1, rw)
    boxes = jnp.stack([(x0 + x1) / 2 / rw, (y0 + y1) / 2 / rh, (x1 - x0) / rw, (y1 - y0) / rh],
                      axis=-1)
    empty = ~jnp.any(rows, axis=-1)
    return jax.lax.stop_gradient(jnp.where(empty[..., None], 0.0, boxes))
