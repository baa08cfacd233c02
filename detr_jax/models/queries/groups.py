"""Group DETR training queries (Chen et al., "Group DETR", 2022): K independent query groups.

In training, the decoder runs `num_groups` groups of `num_queries` learned queries side by side.
Self-attention is block-diagonal (a query only sees its own group) and each group is matched
one-to-one to the ground truth on its own, so every object supervises K queries per layer
instead of one while each group still learns DETR's duplicate-free set prediction. Inference
uses group 0 alone, so the deployed model and its cost are unchanged.

Layout: group g holds decoder query slots g*Q .. (g+1)*Q-1; group 0 is `query_embed`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_self_attn_mask(num_groups: int, num_queries: int) -> jax.Array:
    """bool [1, K*Q, K*Q]: True where query i may attend to query j (same group)."""
    group = jnp.arange(num_groups * num_queries) // num_queries
    return (group[:, None] == group[None, :])[None]


def fold_query_groups(
    outputs: dict[str, jax.Array], batch: dict[str, jax.Array], num_groups: int
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Turns K query groups into K copies of the batch, so that the set loss matches each alone.

    Args:
      outputs: `pred_logits` [L, B, K*Q, C+1] and `pred_boxes` [L, B, K*Q, 4] (cxcywh,
        normalised); other entries are passed through unchanged.
      batch: targets with leading dim B (`labels`, `boxes`, `box_valid`, optional `image_valid`).
      num_groups: K.

    Returns:
      (outputs with `pred_*` [L, K*B, Q, *] in group-major order, batch with its target entries
      tiled K times along the batch axis). The set loss then normalises by K times the box count,
      i.e. it averages the groups' losses.
    """
    if num_groups == 1:
        return outputs, batch
    folded = dict(outputs)
    for key in ("pred_logits", "pred_boxes"):
        x = outputs[key]
        num_layers, bsz, total, last = x.shape
        if total % num_groups:
            raise ValueError(f"{key} has {total} queries, not a multiple of {num_groups} groups")
        x = x.reshape(num_layers, bsz, num_groups, total // num_groups, last)
        folded[key] = x.transpose(0, 2, 1, 3, 4).reshape(num_layers, num_groups * bsz, -1, last)
    tiled = dict(batch)
    for key in ("labels", "boxes", "box_valid", "image_valid"):
        if key in batch:
            tiled[key] = jnp.concatenate([batch[key]] * num_groups, axis=0)
    return folded, tiled
