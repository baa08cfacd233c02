"""Position embeddings for the flattened feature map.

Both take `mask` bool [B, h, w] (True on real positions) and return float32 [B, h, w, hidden_dim].
The channel order mirrors the original DETR: sine puts the y half first, learned puts x first.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

POSITION_EMBEDDING_CHOICES = ("sine", "learned")


def sine_position_embedding(
    mask: jax.Array,
    hidden_dim: int,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * jnp.pi,
    offset: float = 0.0,
) -> jax.Array:
    """DETR's PositionEmbeddingSine, computed from the padding mask.

    Positions are cumulative counts of real pixels along each axis; with `normalize` they are
    divided by the real extent of that row/column and multiplied by `scale`, so a real pixel's
    embedding does not depend on the padding. `offset` is added to the counts before the
    division: Deformable DETR uses -0.5 (pixel centres), DETR 0.

    Args:
      mask: bool [B, h, w], True on real positions.
      hidden_dim: output channels (even); half encode y, half encode x.

    Returns:
      float32 [B, h, w, hidden_dim].
    """
    if hidden_dim % 4:
        raise ValueError(f"model.hidden_dim={hidden_dim} must be divisible by 4 for sine embedding")
    num_feats = hidden_dim // 2
    not_mask = mask.astype(jnp.float32)
    y_embed = jnp.cumsum(not_mask, axis=1)
    x_embed = jnp.cumsum(not_mask, axis=2)
    if normalize:
        eps = 1e-6
        y_embed = (y_embed + offset) / (y_embed[:, -1:, :] + eps) * scale
        x_embed = (x_embed + offset) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = jnp.arange(num_feats, dtype=jnp.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t

    def interleave(p):
        # sin on even channels, cos on odd ones, interleaved as in the original.
        s = jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1)
        return s.reshape(*p.shape[:-1], num_feats)

    return jnp.concatenate([interleave(pos_y), interleave(pos_x)], axis=-1)


def box_sine_embedding(
    boxes: jax.Array, num_feats: int = 128, temperature: float = 10000.0
) -> jax.Array:
    """Sine embedding of anchor points or boxes, as DAB-DETR / DINO's
    `gen_sineembed_for_position` (HF DabDetr's `gen_sine_position_embeddings`).

    Args:
      boxes: float [..., 2] (cx, cy) or [..., 4] (cx, cy, w, h), normalised to (0, 1).
      num_feats: channels per coordinate (hidden_dim / 2).

    Returns:
      float32 [..., 2 * num_feats] or [..., 4 * num_feats]: each coordinate times 2*pi over
      temperature ** (2 * (i // 2) / num_feats), sin on even and cos on odd channels
      (interleaved), coordinates in the order (y, x[, w, h]).
    """
    dim_t = jnp.arange(num_feats, dtype=jnp.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = boxes.astype(jnp.float32)[..., None] * (2 * jnp.pi) / dim_t  # [..., k, F]
    emb = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)
    emb = emb.reshape(*pos.shape[:-1], num_feats)
    order = [1, 0] + list(range(2, boxes.shape[-1]))
    return jnp.concatenate([emb[..., i, :] for i in order], axis=-1)


class LearnedPositionEmbedding(nn.Module):
    """DETR's PositionEmbeddingLearned: row and column tables of `max_size` entries each."""

    hidden_dim: int
    max_size: int = 50

    @nn.compact
    def __call__(self, mask: jax.Array) -> jax.Array:
        _, h, w = mask.shape
        if h > self.max_size or w > self.max_size:
            raise ValueError(
                f"feature map {h}x{w} exceeds the learned position table ({self.max_size}); "
                "use model.neck.position_embedding='sine'"
            )
        init = nn.initializers.uniform(1.0)
        row = nn.Embed(self.max_size, self.hidden_dim // 2, embedding_init=init, name="row_embed")
        col = nn.Embed(self.max_size, self.hidden_dim // 2, embedding_init=init, name="col_embed")
        x_emb = col(jnp.arange(w))  # [w, d/2]
        y_emb = row(jnp.arange(h))  # [h, d/2]
        pos = jnp.concatenate(
            [
                jnp.broadcast_to(x_emb[None, :, :], (h, w, x_emb.shape[-1])),
                jnp.broadcast_to(y_emb[:, None, :], (h, w, y_emb.shape[-1])),
            ],
            axis=-1,
        )
        return jnp.broadcast_to(pos[None], (mask.shape[0], h, w, self.hidden_dim))
