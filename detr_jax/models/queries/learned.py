"""DETR's learned object queries, with optional Group DETR training groups.

Params (in the detector's scope, as in the original's state_dict): `query_embed` [Q, D] and,
with `num_groups` K > 1, `group_query_embed` [(K - 1) * Q, D] ([.., 2D] `with_content`;
created in both modes so the param tree does not depend on `train`; used in training only, see
groups.py). Deformable DETR's one-stage decoder takes the groups as they are (one-to-many
training: each group is matched on its own).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from detr_jax.models.queries.groups import group_self_attn_mask


class LearnedQueries(nn.Module):
    """`num_queries` learned query embeddings (N(0, init_std) as nn.Embedding's default).

    Attributes:
      hidden_dim: D (set by the builder from `model.hidden_dim`).
      num_queries: Q, the detections per image.
      init_std: standard deviation of the embeddings' initialisation.
      num_groups: K Group DETR groups in training (1: plain DETR); inference uses group 0.
      with_content: the embedding is [Q, 2D]: its first half is the queries' position, its
        second their content `tgt` (Deformable DETR's `query_embed`); without it the decoder
        starts from zeros (DETR).
      dtype: compute dtype of the returned embeddings (set by the builder).
    """

    hidden_dim: int = 256
    num_queries: int = 100
    init_std: float = 1.0
    num_groups: int = 1
    with_content: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(
        self, batch_size: int, train: bool = False, targets: dict | None = None
    ) -> dict[str, Any]:
        """The decoder's queries for a batch (docs/interfaces.md, "Query set").

        Returns `query_pos` [B, Q', D] (Q' = K * Q in training with groups, else Q), `tgt` None
        (the decoder starts from zeros) or [B, Q, D] `with_content`, `self_attn_mask` bool
        [1, Q', Q'] or None (True = attend) and `num_groups` (a Python int: the loss matches
        each group on its own). `targets` is unused (denoising generators build queries from it).
        """
        del targets
        dtype = self.dtype or jnp.float32
        q, d = self.num_queries, self.hidden_dim
        width = 2 * d if self.with_content else d
        embed = self.param("query_embed", nn.initializers.normal(self.init_std), (q, width))
        embed = jnp.broadcast_to(embed.astype(dtype)[None], (batch_size, q, width))
        query_pos, tgt = embed[..., :d], (embed[..., d:] if self.with_content else None)
        groups, mask = 1, None
        if self.num_groups > 1:
            extra = self.param(
                "group_query_embed",
                nn.initializers.normal(self.init_std),
                ((self.num_groups - 1) * q, width),
            )
            if train:
                extra = jnp.broadcast_to(extra.astype(dtype)[None], (batch_size,) + extra.shape)
                query_pos = jnp.concatenate([query_pos, extra[..., :d]], axis=1)
                if self.with_content:
                    tgt = jnp.concatenate([tgt, extra[..., d:]], axis=1)
                groups, mask = self.num_groups, group_self_attn_mask(self.num_groups, q)
        return {"query_pos": query_pos, "tgt": tgt, "self_attn_mask": mask,
                "num_groups": groups}



