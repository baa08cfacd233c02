"""Bilinear resizing with PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`
semantics (no antialiasing), in pure JAX.

`jax.image.resize` antialiases when it shrinks, which PyTorch's bilinear mode does not; the
Mask2Former pixel decoder (upsampling the encoder's finest level onto C2) and its masked
attention (shrinking mask logits onto each feature level) are defined by PyTorch's sampling:
output index i reads the source coordinate s = (i + 0.5) * in / out - 0.5, clamped at 0, between
the neighbours floor(s) and min(floor(s) + 1, in - 1). The weights are computed in float32 as
PyTorch's kernel does; the two axes are interpolated one after the other (width first), with
static gathers, so it runs and exports anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source neighbours and weights of each output index along one axis:
    (i0 int32 [n_out], i1 int32 [n_out], w1 float32 [n_out]); output = x[i0] (1 - w1) + x[i1] w1."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"cannot resize an axis of size {n_in} to {n_out}")
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int32), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, w1


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    i0, i1, w1 = bilinear_taps(n_in, n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = jnp.asarray(w1.reshape(shape), x.dtype)
    return jnp.take(x, i0, axis=axis) * (1 - w1) + jnp.take(x, i1, axis=axis) * w1


def resize_bilinear(x: jax.Array, size: tuple[int, int],
                    axes: Sequence[int] = (-2, -1)) -> jax.Array:
    """x [..., H, W, ...] -> the same with the two `axes` (height, width) resized to `size`
    = (h, w), as torch `F.interpolate(x, size, mode="bilinear", align_corners=False)`.

    `axes` names the spatial axes: (-2, -1) for [B, Q, H, W] mask logits, (1, 2) for NHWC
    feature maps. Floating inputs only; the result keeps x's dtype.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"resize_bilinear needs a floating array, got {x.dtype}")
    ax_h, ax_w = (a % x.ndim for a in axes)
    h, w = (int(s) for s in size)
    return _resize_axis(_resize_axis(x, ax_w, w), ax_h, h)
