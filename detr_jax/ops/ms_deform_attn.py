"""Multi-scale deformable attention's core (Deformable DETR), pure JAX with gathers.

Each query samples `P` points on each of `L` feature levels per head and returns the attention-
weighted sum of the bilinearly sampled values. The sampling has the semantics of PyTorch's
`F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)` (what the original's
CUDA kernel and HF's PyTorch fallback compute): a location (x, y) in [0, 1] of a level of size
h x w reads pixel coordinates (x * w - 0.5, y * h - 0.5), and each of its four neighbours outside
the map contributes zero.

It is written with gathers (no grid_sample and no custom kernel), so it runs on CPU, GPU and TPU
and exports: per level, the four neighbours of every sampling point are packed into one gather
(scenic packs them likewise: gathers are slow on TPU, one large one beats four). It is
differentiable in the values, the sampling locations and the attention weights (the location
gradient flows through the bilinear weights, as grid_sample's does; it is not defined where a
coordinate is exactly an integer).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def ms_deform_attn(
    value: jax.Array,
    spatial_shapes: Sequence[tuple[int, int]],
    sampling_locations: jax.Array,
    attention_weights: jax.Array,
    query_chunk: int = 0,
) -> jax.Array:
    """The deformable attention core.

    With `query_chunk` > 0 (and more queries than that), the queries are processed in chunks of
    that many (`lax.map`, each chunk rematerialised in the backward pass): the gathered
    neighbours, [B, H, Lq * P * 4, Dh] per level, then only exist for one chunk at a time, in
    the forward and the backward pass (the encoder's queries are its tokens: at 800x1333 about
    1.4 GiB per layer and image unchunked). Same results.

    Args:
      value: [B, N, H, Dh], the projected values of all levels, flattened row-major per level and
        concatenated in `spatial_shapes` order (N = sum of h_l * w_l).
      spatial_shapes: ((h_l, w_l), ...) static Python ints, one per level (L levels).
      sampling_locations: [B, Lq, H, L, P, 2] (x, y) normalised to each level's size, [0, 1]
        inside the map (outside is allowed and reads zeros).
      attention_weights: [B, Lq, H, L, P], already normalised over L * P by the caller.

    Returns:
      [B, Lq, H * Dh] in value's dtype (accumulated in float32, or float64 for float64 inputs).
    """
    b, n, heads, dh = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    if 0 < query_chunk < lq:
        return _chunked(value, tuple(spatial_shapes), sampling_locations, attention_weights,
                        int(query_chunk))
    if len(spatial_shapes) != levels:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {levels} sampling levels")
    if sum(h * w for h, w in spatial_shapes) != n:
        raise ValueError(f"spatial_shapes {tuple(spatial_shapes)} do not add up to N={n}")
    acc = jnp.promote_types(jnp.result_type(value, sampling_locations, attention_weights),
                            jnp.float32)  # float32, or float64 under x64
    out = jnp.zeros((b, lq, heads, dh), acc)
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        v = value[:, start:start + h * w].transpose(0, 2, 1, 3)  # [B, H, hw, Dh]
        start += h * w
        loc = sampling_locations[:, :, :, lvl].astype(acc)  # [B, Lq, H, P, 2]
        x = loc[..., 0] * w - 0.5
        y = loc[..., 1] * h - 0.5
        x0, y0 = jnp.floor(x), jnp.floor(y)
        fx, fy = x - x0, y - y0
        corners = ((y0, x0, (1 - fy) * (1 - fx)), (y0, x0 + 1, (1 - fy) * fx),
                   (y0 + 1, x0, fy * (1 - fx)), (y0 + 1, x0 + 1, fy * fx))
        idx, wts = [], []
        for cy, cx, cw in corners:
            inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
            flat = jnp.clip(cy, 0, h - 1) * w + jnp.clip(cx, 0, w - 1)
            idx.append(jax.lax.stop_gradient(flat).astype(jnp.int32))
            wts.append(jnp.where(inside, cw, 0.0))
        idx = jnp.stack(idx, axis=-1)  # [B, Lq, H, P, 4]
        wts = jnp.stack(wts, axis=-1) * attention_weights[:, :, :, lvl, :, None].astype(acc)
        # One gather for the 4 neighbours of every point: [B, H, Lq * P * 4] rows of v.
        flat_idx = idx.transpose(0, 2, 1, 3, 4).reshape(b, heads, lq * points * 4)
        sampled = jnp.take_along_axis(v, flat_idx[..., None], axis=2)  # [B, H, Lq*P*4, Dh]
        sampled = sampled.reshape(b, heads, lq, points * 4, dh)
        wts = wts.transpose(0, 2, 1, 3, 4).reshape(b, heads, lq, points * 4)
        out = out + jnp.einsum("bhqk,bhqkd->bqhd", wts, sampled.astype(acc))
    return out.reshape(b, lq, heads * dh).astype(value.dtype)


def _chunked(value, spatial_shapes, locations, weights, chunk):
    """`ms_deform_attn` over query chunks of `chunk` (the last one padded with weight 0)."""
    b, lq = locations.shape[:2]
    num = -(-lq // chunk)
    pad = num * chunk - lq

    def split(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((b, num, chunk) + x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one(args):
        loc, w = args
        return ms_deform_attn(value, spatial_shapes, loc, w)

    out = jax.lax.map(one, (split(locations), split(weights)))  # [num, B, chunk, H * Dh]
    return jnp.moveaxis(out, 0, 1).reshape(b, num * chunk, -1)[:, :lq]
