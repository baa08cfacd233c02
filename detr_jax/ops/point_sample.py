"""Bilinear point sampling of mask logits (PointRend / Mask2Former) with gathers.

Points are normalised (x, y) in [0, 1] over the sampled array's extent: (0, 0) is the top-left
corner of pixel (0, 0), (1, 1) the bottom-right corner of the last pixel. A point maps to the
continuous pixel position `(x * w - 0.5, y * h - 0.5)` (pixel centres at integers), and values
outside the array are 0: torch's `grid_sample(input, 2 * points - 1, align_corners=False)`
with zero padding, as detectron2's `point_sample`.

`uncertainty_points` is Mask2Former's `get_uncertain_point_coords_with_randomness`
(uncertainty = -|logit|): draw `num_points * oversample_ratio` uniform candidates, keep the
`importance_sample_ratio * num_points` most uncertain, fill up with uniform points.

`stride_scale` relates points on the padded canvas to a mask at stride 4 of it (the contract
of `pred_masks`, docs/interfaces.md "Segmentation").
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MASK_STRIDE = 4  # pred_masks are at stride 4 of the padded canvas (h = ceil(H / 4)).


def point_sample(values: jax.Array, points: jax.Array) -> jax.Array:
    """Bilinear samples of `values` at `points`, zero outside.

    Args:
      values: [N, *C, h, w] (any float or integer dtype; gathered in it, then cast to float32).
      points: float [N, P, 2] normalised (x, y) over the (h, w) extent, shared by the C dims.

    Returns:
      float32 [N, *C, P]. Differentiable in `values` (not in `points`).
    """
    if values.ndim < 3 or points.ndim != 3 or points.shape[-1] != 2 \
            or points.shape[0] != values.shape[0]:
        raise ValueError(f"point_sample expects values [N, ..., h, w] and points [N, P, 2], got "
                         f"{values.shape} and {points.shape}")
    n, h, w = values.shape[0], values.shape[-2], values.shape[-1]
    lead = values.shape[1:-2]
    num_p = points.shape[1]
    pts = jax.lax.stop_gradient(jnp.asarray(points, jnp.float32))
    ix = pts[..., 0] * w - 0.5
    iy = pts[..., 1] * h - 0.5
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    fx, fy = ix - x0, iy - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    # The four neighbours packed along one axis: (y0, x0), (y0, x1), (y1, x0), (y1, x1).
    xs = jnp.stack([x0, x0 + 1, x0, x0 + 1], axis=1)  # [N, 4, P]
    ys = jnp.stack([y0, y0, y0 + 1, y0 + 1], axis=1)
    wts = jnp.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    wts = jnp.where(inside, wts, 0.0)
    flat_idx = jnp.clip(ys, 0, h - 1) * w + jnp.clip(xs, 0, w - 1)  # [N, 4, P]
    flat = values.reshape(n, -1, h * w)  # [N, prod(C), h*w]
    gathered = jnp.take_along_axis(flat, flat_idx.reshape(n, 1, 4 * num_p), axis=-1)
    gathered = gathered.astype(jnp.float32).reshape(n, -1, 4, num_p)
    out = jnp.sum(gathered * wts[:, None], axis=2)  # [N, prod(C), P]
    return out.reshape((n,) + lead + (num_p,))


def stride_scale(mask_hw: tuple[int, int], canvas_hw: tuple[int, int],
                 stride: int = MASK_STRIDE) -> jax.Array:
    """float32 [2] (x, y) factors taking canvas-normalised points to the mask's own normalised
    coordinates, for a mask [h, w] at `stride` of a canvas [H, W] (h = ceil(H / stride)):
    the mask covers `stride * h >= H` canvas pixels, so a canvas point p samples the mask at
    `p * (W / (stride * w), H / (stride * h))` (1 when H and W are multiples of the stride).

    Raises ValueError when the mask is not at that stride of the canvas.
    """
    (h, w), (big_h, big_w) = mask_hw, canvas_hw
    if (h, w) != (math.ceil(big_h / stride), math.ceil(big_w / stride)):
        raise ValueError(f"pred_masks of size {(h, w)} are not at stride {stride} of the "
                         f"{(big_h, big_w)} mask canvas: expected "
                         f"{(math.ceil(big_h / stride), math.ceil(big_w / stride))}")
    return jnp.array([big_w / (stride * w), big_h / (stride * h)], jnp.float32)


def _check_sampling(num_points: int, oversample_ratio: float,
                    importance_sample_ratio: float) -> tuple[int, int]:
    """(#oversampled candidates, #importance points); one-line errors for bad settings."""
    if int(num_points) != num_points or num_points < 1:
        raise ValueError(f"num_points must be an integer >= 1, got {num_points!r}")
    if not oversample_ratio >= 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio!r}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got "
                         f"{importance_sample_ratio!r}")
    return int(num_points * oversample_ratio), int(importance_sample_ratio * num_points)


def random_candidates(rng: jax.Array, num: int, num_points: int, oversample_ratio: float,
                      importance_sample_ratio: float) -> tuple[jax.Array, jax.Array]:
    """The uniform draws of `uncertainty_points`: (candidates float32 [num, S, 2] with
    S = int(num_points * oversample_ratio), fill float32 [num, R, 2] with
    R = num_points - int(importance_sample_ratio * num_points)), in [0, 1)."""
    num_sampled, num_uncertain = _check_sampling(num_points, oversample_ratio,
                                                 importance_sample_ratio)
    k_cand, k_fill = jax.random.split(rng)
    cand = jax.random.uniform(k_cand, (num, num_sampled, 2), jnp.float32)
    fill = jax.random.uniform(k_fill, (num, int(num_points) - num_uncertain, 2), jnp.float32)
    return cand, fill


def select_uncertain(logits: jax.Array, candidates: jax.Array, fill: jax.Array,
                     num_uncertain: int, point_scale: jax.Array | None = None) -> jax.Array:
    """The `num_uncertain` candidates of largest -|logit| (descending), then `fill`.

    logits [N, h, w]; candidates [N, S, 2] and fill [N, R, 2] normalised (x, y); the logits
    are sampled at `candidates * point_scale` ([2] (x, y), default 1). Returns float32
    [N, num_uncertain + R, 2], no gradient.
    """
    logits = jax.lax.stop_gradient(logits)
    scale = jnp.ones((2,), jnp.float32) if point_scale is None else point_scale
    uncertainty = -jnp.abs(point_sample(logits, candidates * scale))  # [N, S]
    _, idx = jax.lax.top_k(uncertainty, num_uncertain)
    chosen = jnp.take_along_axis(candidates, idx[..., None], axis=1)
    return jax.lax.stop_gradient(jnp.concatenate([chosen, fill], axis=1))


def uncertainty_points(logits: jax.Array, rng: jax.Array, num_points: int,
                       oversample_ratio: float, importance_sample_ratio: float,
                       point_scale: jax.Array | None = None) -> jax.Array:
    """Mask2Former's importance-sampled points of mask logits.

    Args:
      logits: float [N, h, w] mask logits (no gradient flows through the choice).
      rng: a PRNG key.
      num_points: P, the points per mask.
      oversample_ratio: >= 1; `int(P * ratio)` uniform candidates per mask.
      importance_sample_ratio: in [0, 1]; `int(ratio * P)` of the points are the most uncertain
        candidates (uncertainty -|logit|), the rest fresh uniform points.
      point_scale: optional [2] (x, y): the logits are sampled at `point * point_scale`
        (points normalised over a canvas the logits cover at a stride: `stride_scale`).

    Returns:
      float32 [N, P, 2] normalised (x, y) points in [0, 1), static shape.
    """
    _, num_uncertain = _check_sampling(num_points, oversample_ratio, importance_sample_ratio)
    cand, fill = random_candidates(rng, logits.shape[0], num_points, oversample_ratio,
                                   importance_sample_ratio)
    return select_uncertain(logits, cand, fill, num_uncertain, point_scale)


__all__ = ["MASK_STRIDE", "point_sample", "random_candidates", "select_uncertain",
           "stride_scale", "uncertainty_points"]
