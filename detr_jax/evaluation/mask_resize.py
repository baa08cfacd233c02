"""Host-side (numpy) resizing of masks and id maps to the original image size.

- :func:`resize_bilinear`: PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)``
  (half-pixel centres, source coordinates below 0 clamped to 0, no antialiasing when shrinking),
  the resize Mask2Former / DETR apply to mask logits or probabilities.
- :func:`resize_nearest`: centre-aligned nearest neighbour (PyTorch's ``"nearest-exact"``,
  source index ``floor((i + 0.5) * in / out)``), for id maps and binary masks.
"""

from __future__ import annotations

import numpy as np

from detr_jax.ops.interpolate import bilinear_taps


def _check(x: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    if x.ndim < 2:
        raise ValueError(f"expected [..., H, W], got shape {x.shape}")
    out_h, out_w = (int(v) for v in size)
    if out_h <= 0 or out_w <= 0 or 0 in x.shape[-2:]:
        raise ValueError(f"cannot resize {x.shape[-2:]} to {(out_h, out_w)}")
    return out_h, out_w


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """float [..., H, W] -> float32 [..., h, w] (``size = (h, w)``), bilinear as described above."""
    x = np.asarray(x, np.float32)
    out_h, out_w = _check(x, size)
    lo, hi, f = bilinear_taps(x.shape[-2], out_h)
    x = x[..., lo, :] * (1 - f)[:, None] + x[..., hi, :] * f[:, None]
    lo, hi, f = bilinear_taps(x.shape[-1], out_w)
    return x[..., lo] * (1 - f) + x[..., hi] * f


def resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[..., H, W] of any dtype -> [..., h, w], centre-aligned nearest neighbour."""
    x = np.asarray(x)
    out_h, out_w = _check(x, size)
    rows = np.minimum(((np.arange(out_h) + 0.5) * (x.shape[-2] / out_h)).astype(np.int64),
                      x.shape[-2] - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (x.shape[-1] / out_w)).astype(np.int64),
                      x.shape[-1] - 1)
    return x[..., rows[:, None], cols[None, :]]
