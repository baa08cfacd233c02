"""Multi-scale deformable attention as a flax Module, and the reference points it samples around.

The query predicts, per head, level and point, a sampling offset and an attention weight
(softmaxed over levels x points); the values are sampled bilinearly at reference + offset
(detr_jax/ops/ms_deform_attn.py). Params, as the original `MSDeformAttn`: `sampling_offsets`,
`attention_weights`, `value_proj`, `output_proj` (each `{kernel, bias}`), initialised as the
original: zero offset kernel with the bias pointing each head in its own direction (point p at
distance p + 1), zero attention weights (uniform after the softmax), xavier value / output
projections with zero biases.

Reference points are normalised to the padded canvas, (x, y) or (cx, cy, w, h) in [0, 1] per
level: the callers scale image-relative points by each level's valid ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.ops.ms_deform_attn import ms_deform_attn

_xavier = nn.initializers.xavier_uniform()


def offset_bias_init(num_heads: int, num_levels: int, num_points: int):
    """The original's sampling-offset bias: head k points along angle 2*pi*k/H (scaled so the
    larger coordinate is 1), point p at (p + 1) times that, the same on every level."""

    def init(key, shape, dtype=jnp.float32):
        del key
        theta = np.arange(num_heads, dtype=np.float64) * (2.0 * np.pi / num_heads)
        grid = np.stack([np.cos(theta), np.sin(theta)], -1)
        grid = grid / np.abs(grid).max(-1, keepdims=True)
        grid = np.tile(grid[:, None, None, :], (1, num_levels, num_points, 1))
        grid = grid * np.arange(1, num_points + 1)[None, None, :, None]
        return jnp.asarray(grid.reshape(shape), dtype)

    return init


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention of `num_heads` heads, `num_points` points on each of `num_levels`.

    Sampling offsets and attention weights are computed in float32 whatever `dtype` (sampling
    locations need the precision); the value and output projections run in `dtype`. `remat`
    recomputes the sampling in the backward pass instead of storing the gathered values
    ([B, H, Lq * L * P * 4, Dh] per layer); `query_chunk` > 0 samples that many queries at a
    time (ops/ms_deform_attn.py), which bounds those values in both passes.
    """

    hidden_dim: int
    num_heads: int = 8
    num_levels: int = 4
    num_points: int = 4
    dtype: Any = None
    remat: bool = False
    query_chunk: int = 0

    @nn.compact
    def __call__(
        self,
        query: jax.Array,
        reference_points: jax.Array,
        value: jax.Array,
        value_mask: jax.Array | None,
        spatial_shapes: Sequence[tuple[int, int]],
    ) -> jax.Array:
        """Deformable attention from queries to the multi-scale values.

        Args:
          query: [B, Lq, D] (position embedding already added).
          reference_points: [B, Lq, L, 2] (x, y) or [B, Lq, L, 4] (cx, cy, w, h), normalised to
            each level's padded canvas.
          value: [B, N, D], the flattened levels (before the value projection).
          value_mask: bool [B, N], True on real positions (padding values are zeroed) or None.
          spatial_shapes: ((h_l, w_l), ...) static, L = num_levels entries.

        Returns:
          [B, Lq, D].
        """
        d, heads, levels, points = self.hidden_dim, self.num_heads, self.num_levels, self.num_points
        if d % heads:
            raise ValueError(f"model.hidden_dim={d} must be divisible by "
                             f"model.transformer.nheads={heads}")
        if len(spatial_shapes) != levels:
            raise ValueError(f"{len(spatial_shapes)} feature levels reach an attention built for "
                             f"{levels}")
        b, lq, _ = query.shape
        n = value.shape[1]
        v = nn.Dense(d, kernel_init=_xavier, bias_init=nn.initializers.zeros, dtype=self.dtype,
                     name="value_proj")(value)
        if value_mask is not None:
            v = jnp.where(value_mask[..., None], v, jnp.zeros((), v.dtype))
        v = v.reshape(b, n, heads, d // heads)
        q32 = query.astype(jnp.float32)
        offsets = nn.Dense(heads * levels * points * 2, kernel_init=nn.initializers.zeros,
                           bias_init=offset_bias_init(heads, levels, points), dtype=jnp.float32,
                           name="sampling_offsets")(q32)
        offsets = offsets.reshape(b, lq, heads, levels, points, 2)
        logits = nn.Dense(heads * levels * points, kernel_init=nn.initializers.zeros,
                          bias_init=nn.initializers.zeros, dtype=jnp.float32,
                          name="attention_weights")(q32)
        weights = jax.nn.softmax(logits.reshape(b, lq, heads, levels * points), axis=-1)
        weights = weights.reshape(b, lq, heads, levels, points)
        ref = reference_points.astype(jnp.float32)
        if ref.shape[-1] == 2:
            normaliser = jnp.asarray([[w, h] for h, w in spatial_shapes], jnp.float32)
            loc = ref[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        elif ref.shape[-1] == 4:
            loc = (ref[:, :, None, :, None, :2]
                   + offsets / points * ref[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference points end in {ref.shape[-1]}; expected 2 or 4")
        self.sow("intermediates", "sampling_locations", loc)
        self.sow("intermediates", "sampling_weights", weights)
        core = ms_deform_attn
        if self.remat:
            core = jax.checkpoint(ms_deform_attn, static_argnums=(1, 4))
        out = core(v, tuple(spatial_shapes), loc, weights.astype(loc.dtype), self.query_chunk)
        return nn.Dense(d, kernel_init=_xavier, bias_init=nn.initializers.zeros, dtype=self.dtype,
                        name="output_proj")(out.astype(v.dtype))


def encoder_reference_points(spatial_shapes: Sequence[tuple[int, int]],
                             valid_ratios: jax.Array) -> jax.Array:
    """Every token's own pixel centre as its reference, on every level: [B, N, L, 2] (x, y).

    A token at (i, j) of a level h x w has the image-relative centre ((j + 0.5) / real_w,
    (i + 0.5) / real_h) (real_* = valid ratio * size), then scaled by each level's valid ratios
    to that level's canvas, as the original's `get_reference_points`.
    valid_ratios: float32 [B, L, 2] (w, h).
    """
    refs = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5,
                              jnp.arange(w, dtype=jnp.float32) + 0.5, indexing="ij")
        ref_y = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(jnp.stack([ref_x, ref_y], axis=-1))
    ref = jnp.concatenate(refs, axis=1)  # [B, N, 2]
    return ref[:, :, None] * valid_ratios[:, None]


def scale_to_levels(reference_points: jax.Array, valid_ratios: jax.Array) -> jax.Array:
    """Image-relative references [B, Q, 2 | 4] -> per-level canvas references [B, Q, L, 2 | 4]
    (x and w scaled by each level's width ratio, y and h by its height ratio)."""
    ratios = valid_ratios if reference_points.shape[-1] == 2 else jnp.concatenate(
        [valid_ratios, valid_ratios], axis=-1)
    return reference_points[:, :, None] * ratios[:, None]
