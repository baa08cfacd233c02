"""Two-stage Deformable DETR: per-pixel encoder proposals whose top-k seed the decoder.

Every encoder token proposes a box centred on its pixel, of size 0.05 * 2^level (image-relative),
in inverse-sigmoid space; tokens on padding, and proposals not inside (0.01, 0.99), are invalid:
their proposal is a large value (sigmoid 1, where the original puts +inf) and their feature is
zeroed. The heads' last class / box head scores and refines every proposal; the top-k by the
first class logit become the decoder's reference boxes, and a sine embedding of them, through
`pos_trans` + LayerNorm, its query position and content (the original's A.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from detr_jax.models.necks.multi_scale import valid_counts

# Stands in for the original's +inf on invalid proposals: sigmoid(INVALID + delta) is exactly 1
# in float32 and its gradient exactly 0, without infinities in the program.
INVALID_PROPOSAL = 1e4


def encoder_proposals(mask: jax.Array, spatial_shapes: Sequence[tuple[int, int]]
                      ) -> tuple[jax.Array, jax.Array]:
    """The per-token proposals of the original's `gen_encoder_output_proposals`.

    Args:
      mask: bool [B, N] (True on real tokens), the levels flattened as `spatial_shapes`.
      spatial_shapes: ((h_l, w_l), ...).

    Returns:
      proposals float32 [B, N, 4]: inverse-sigmoid cxcywh (image-relative), INVALID_PROPOSAL
      where invalid; valid bool [B, N].
    """
    b = mask.shape[0]
    props, start = [], 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        m = mask[:, start:start + h * w].reshape(b, h, w)
        start += h * w
        real = valid_counts(m)  # [B, 2] (w, h)
        ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                              indexing="ij")
        grid = jnp.stack([xs, ys], axis=-1).reshape(1, h * w, 2)
        centre = (grid + 0.5) / real[:, None, :]
        size = jnp.full_like(centre, 0.05 * (2.0 ** lvl))
        props.append(jnp.concatenate([centre, size], axis=-1))
    p = jnp.concatenate(props, axis=1)
    valid = jnp.all((p > 0.01) & (p < 0.99), axis=-1) & mask
    safe = jnp.clip(p, 1e-6, 1 - 1e-6)
    unact = jnp.log(safe / (1.0 - safe))
    return jnp.where(valid[..., None], unact, INVALID_PROPOSAL), valid


def proposal_position_embedding(proposals: jax.Array, hidden_dim: int,
                                temperature: float = 10000.0) -> jax.Array:
    """Sine embedding of inverse-sigmoid boxes [B, Q, 4] -> [B, Q, 2 * hidden_dim]: each of the
    4 coordinates (after the sigmoid, times 2*pi) in hidden_dim / 2 interleaved sin / cos
    channels, as the original's `get_proposal_pos_embed`."""
    num_feats = hidden_dim // 2
    dim_t = jnp.arange(num_feats, dtype=jnp.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = jax.nn.sigmoid(proposals.astype(jnp.float32)) * (2 * jnp.pi)
    pos = pos[..., None] / dim_t  # [B, Q, 4, F]
    s = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)
    return s.reshape(*proposals.shape[:-1], 4 * num_feats)
