"""Deformable DETR's multi-scale neck: C3-C5 projected to D channels, plus strided extra levels.

Each backbone level goes through a 1x1 conv and GroupNorm(32); each extra level is a 3x3 stride-2
conv + GroupNorm on the previous map (the first on the deepest backbone level's raw features),
as the original's `input_proj`. Every level gets the sine position embedding (pixel-centred,
normalised by the real extent) plus a learned level embedding, and is flattened row-major; the
levels are concatenated finest first.

Params (in the detector's scope): `input_proj_{l}/conv/{kernel,bias}`,
`input_proj_{l}/norm/{scale,bias}` for l = 0..L-1, and `level_embed` [L, D] (the original's
`transformer.level_embed`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.models.backbones.base import Feature, resize_mask_nearest
from detr_jax.models.position_encoding import sine_position_embedding

_xavier = nn.initializers.xavier_uniform()


class InputProjection(nn.Module):
    """conv (1x1, or 3x3 stride 2 padding 1) + GroupNorm: [B, h, w, C] -> [B, h', w', D]."""

    hidden_dim: int
    kernel: int = 1
    stride: int = 1
    num_groups: int = 32
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.kernel // 2
        x = nn.Conv(self.hidden_dim, (self.kernel, self.kernel), (self.stride, self.stride),
                    padding=((pad, pad), (pad, pad)), kernel_init=_xavier,
                    bias_init=nn.initializers.zeros, dtype=self.dtype, name="conv")(x)
        return nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype,
                            name="norm")(x)


class ConvNorm(nn.Module):
    """k x k conv (no bias, torch padding k // 2) + GroupNorm (two-pass variance), then ReLU
    when `relu`: [B, h, w, C] -> [B, h, w, features]; params `conv/kernel`, `norm/{scale,bias}`
    (the FPN steps of MaskFormer's and Mask2Former's pixel decoders)."""

    features: int
    kernel: int = 3
    relu: bool = True
    num_groups: int = 32
    dtype: Any = None
    kernel_init: Any = _xavier

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = self.kernel // 2
        x = nn.Conv(self.features, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
                    use_bias=False, kernel_init=self.kernel_init, dtype=self.dtype,
                    name="conv")(x)
        x = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, use_fast_variance=False,
                         dtype=self.dtype, name="norm")(x)
        return nn.relu(x) if self.relu else x


def valid_counts(mask: jax.Array) -> jax.Array:
    """mask bool [B, h, w] (True on real positions, image at the top-left) -> float32 [B, 2]:
    the real (width, height), read off the first row and column as the original.

    A filler image (no real position) counts one real row and column, so the reference points
    and proposals built from it stay finite; no real image is affected (its first row and
    column are real at every level).
    """
    valid_h = jnp.maximum(jnp.sum(mask[:, :, 0], axis=1), 1).astype(jnp.float32)
    valid_w = jnp.maximum(jnp.sum(mask[:, 0, :], axis=1), 1).astype(jnp.float32)
    return jnp.stack([valid_w, valid_h], axis=-1)


def valid_ratios(mask: jax.Array) -> jax.Array:
    """mask bool [B, h, w] -> float32 [B, 2]: (real width / w, real height / h)."""
    h, w = mask.shape[1:]
    return valid_counts(mask) / jnp.asarray([w, h], jnp.float32)


class MultiScaleNeck(nn.Module):
    """Backbone levels `levels` plus `extra_levels` strided levels -> multi-scale tokens.

    Attributes:
      hidden_dim: D (set by the builder).
      levels: the backbone levels read, finest first (Deformable DETR: C3, C4, C5).
      extra_levels: stride-2 levels added after the deepest (1: the stride-64 level).
      num_groups: GroupNorm groups (32).
      dtype: compute dtype (set by the builder).
    """

    hidden_dim: int = 256
    levels: tuple[str, ...] = ("C3", "C4", "C5")
    extra_levels: int = 1
    num_groups: int = 32
    dtype: Any = None

    @property
    def input_levels(self) -> tuple[str, ...]:
        """The backbone levels this neck reads (the builder asks the backbone for them)."""
        return tuple(self.levels)

    @property
    def num_levels(self) -> int:
        return len(self.levels) + self.extra_levels

    @nn.compact
    def __call__(self, feats: dict[str, Feature], train: bool = False) -> dict[str, Any]:
        """{level: Feature} (and `input`: the images and pixel mask) -> the transformer's input
        (docs/interfaces.md, "Neck"): `tokens` [B, N, D], `pos` [B, N, D] (sine + level
        embedding), `mask` bool [B, N] (True = real), `spatial_shapes` ((h_l, w_l), ...),
        `level_start` (offset of each level in N), `valid_ratios` float32 [B, L, 2] (w, h)."""
        d = self.hidden_dim
        if d % self.num_groups:
            raise ValueError(f"model.hidden_dim={d} must be divisible by "
                             f"model.neck.num_groups={self.num_groups}")
        maps, masks = [], []
        for i, name in enumerate(self.levels):
            x, mask, _ = feats[name]
            maps.append(InputProjection(d, num_groups=self.num_groups, dtype=self.dtype,
                                        name=f"input_proj_{i}")(x))
            masks.append(mask)
        pixel_mask = feats["input"].mask
        for j in range(self.extra_levels):
            src = feats[self.levels[-1]].features if j == 0 else maps[-1]
            y = InputProjection(d, kernel=3, stride=2, num_groups=self.num_groups,
                                dtype=self.dtype, name=f"input_proj_{len(self.levels) + j}")(src)
            maps.append(y)
            masks.append(resize_mask_nearest(pixel_mask, y.shape[1], y.shape[2]))
        level_embed = self.param("level_embed", nn.initializers.normal(1.0),
                                 (self.num_levels, d))
        b = maps[0].shape[0]
        tokens, pos, flat_masks, shapes = [], [], [], []
        for lvl, (x, mask) in enumerate(zip(maps, masks, strict=True)):
            h, w = x.shape[1:3]
            shapes.append((h, w))
            p = sine_position_embedding(mask, d, offset=-0.5) + level_embed[lvl]
            tokens.append(x.reshape(b, h * w, d))
            pos.append(p.reshape(b, h * w, d).astype(x.dtype))
            flat_masks.append(mask.reshape(b, h * w))
        starts = tuple(int(s) for s in np.cumsum([0] + [h * w for h, w in shapes])[:-1])
        return {
            "tokens": jnp.concatenate(tokens, axis=1),
            "pos": jnp.concatenate(pos, axis=1),
            "mask": jnp.concatenate(flat_masks, axis=1),
            "spatial_shapes": tuple(shapes),
            "level_start": starts,
            "valid_ratios": jnp.stack([valid_ratios(m) for m in masks], axis=1),
        }
