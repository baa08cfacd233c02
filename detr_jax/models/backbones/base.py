"""What every backbone returns: named levels (`C2`..`C5`) with their strides and padding masks.

A backbone is a flax Module called as `backbone(images, pixel_mask, train)` with images float
[B, H, W, 3] (normalised) and pixel_mask bool [B, H, W] (True on real pixels; images sit at the
top-left of their canvas). It returns `{level: Feature}` for the levels it was built with
(`return_levels`, set by the model builder from what the neck reads) and may define
`param_rules()`: parameter-group rules on paths inside the backbone (see detr_jax/optim.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class Feature(NamedTuple):
    """One named backbone level: `features` [B, h, w, C], `mask` bool [B, h, w] (True on real
    positions) and `stride` (input pixels per position, a Python int)."""

    features: jax.Array
    mask: jax.Array
    stride: int


def resize_mask_nearest(mask: jax.Array, h: int, w: int) -> jax.Array:
    """bool [B, H, W] -> [B, h, w] as torch `F.interpolate(mode="nearest")`: row i takes source
    row floor(i * H / h) (float32 arithmetic), as DETR's backbone resizes its padding mask."""

    def index(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(idx, n_in - 1)

    return mask[:, index(mask.shape[1], h)][:, :, index(mask.shape[2], w)]
