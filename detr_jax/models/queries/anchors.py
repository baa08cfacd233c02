"""DAB-DETR's anchor-box queries (Liu et al., "DAB-DETR: Dynamic Anchor Boxes are Better Queries
for DETR", 2022): each query is a learned 4-D anchor box, refined layer by layer by the decoder.

The anchors are stored before the sigmoid (`refpoint_embed` [Q, 4], cxcywh logits, as the
original's `refpoint_embed` and HF's `query_refpoint_embeddings`); the query set carries them
as boxes, `reference_points` = sigmoid(refpoint_embed), normalised cxcywh in (0, 1). The
decoder derives each layer's positional query from the current anchor
(transformers/dab.py), so there is no `query_pos`; the content `tgt` starts from zeros, or, with
`num_patterns` P > 0 (Anchor DETR's patterns, DAB-DETR's `--num_patterns`), from P learned
pattern embeddings shared by all anchors: the decoder then has P * Q queries, query p * Q + q
being pattern p on anchor q (HF's and the original's order).

Params (in the detector's scope): `refpoint_embed` [Q, 4], `patterns` [P, D] (P > 0) and, with
`num_groups` K > 1, `group_refpoint_embed` [(K - 1) * Q, 4] (Group DETR training groups, made in
both modes so the param tree does not depend on `train`; used in training only, groups.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.queries.groups import group_self_attn_mask
from detr_jax.ops.box_ops import inverse_sigmoid


def _anchor_init(std: float, random_xy: bool):
    """N(0, std) on all four logits; with `random_xy` the centres are U(0, 1) boxes instead
    (their logits), as DAB-DETR's `random_refpoints_xy`."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        k_n, k_u = jax.random.split(key)
        embed = jax.random.normal(k_n, shape, dtype) * std
        if random_xy:
            xy = inverse_sigmoid(jax.random.uniform(k_u, shape[:-1] + (2,), dtype))
            embed = embed.at[..., :2].set(xy)
        return embed

    return init


class AnchorQueries(nn.Module):
    """`num_queries` learned anchor boxes (DAB-DETR), with optional patterns and Group DETR groups.

    Attributes:
      hidden_dim: D (set by the builder), the width of the pattern embeddings.
      num_queries: Q anchors (DAB-DETR: 300).
      init_std: the anchor logits' N(0, init_std) initialisation (1.0: nn.Embedding's default,
        as the original; HF's `_init_weights` draws them with its init_std 0.02, which puts
        every anchor near (0.5, 0.5, 0.5, 0.5)).
      random_xy: initialise the anchors' centres uniformly in (0, 1) (the original's
        `random_refpoints_xy`).
      freeze_xy: no gradient to the anchors' centres (what `random_refpoints_xy` is described
        to do; the original's `weight.data[:, :2].requires_grad = False` has no effect in
        PyTorch, so its centres do train). Weight decay still applies to them (AdamW's
        decoupled decay, lr * wd = 1e-8 per step in the recipe).
      num_patterns: P pattern embeddings for the content (0: `tgt` zeros, DAB-DETR's default).
      num_groups: K Group DETR groups in training (1: plain); inference uses group 0.
      dtype: compute dtype of the pattern embeddings (set by the builder); anchors are float32.
    """

    reference_boxes: ClassVar[bool] = True  # the query set carries 4-D `reference_points`

    hidden_dim: int = 256
    num_queries: int = 300
    init_std: float = 1.0
    random_xy: bool = False
    freeze_xy: bool = False
    num_patterns: int = 0
    num_groups: int = 1
    dtype: Any = None

    @nn.compact
    def __call__(
        self, batch_size: int, train: bool = False, targets: dict | None = None
    ) -> dict[str, Any]:
        """The decoder's queries (docs/interfaces.md, "Query generator").

        Returns `reference_points` float32 [B, Q', 4] (normalised cxcywh anchors in (0, 1);
        Q' = K * P' * Q in training with K groups, P' = max(P, 1)), `query_pos` None (the
        decoder makes it from the anchors), `tgt` None (zeros) or [B, Q', D] the patterns,
        `self_attn_mask` bool [1, Q', Q'] with groups in training (else None) and `num_groups`
        (Python int). `targets` is unused (denoising generators read it).
        """
        del targets
        q = self.num_queries
        init = _anchor_init(self.init_std, self.random_xy)
        anchors = self.param("refpoint_embed", init, (q, 4))
        groups = 1
        if self.num_groups > 1:
            extra = self.param("group_refpoint_embed", init, ((self.num_groups - 1) * q, 4))
            if train:
                anchors, groups = jnp.concatenate([anchors, extra], axis=0), self.num_groups
        if self.freeze_xy:
            anchors = jnp.concatenate([jax.lax.stop_gradient(anchors[:, :2]), anchors[:, 2:]], -1)
        boxes = jax.nn.sigmoid(anchors.astype(jnp.float32))  # [K*Q, 4]
        tgt = None
        per_group = q
        if self.num_patterns > 0:
            p, d = self.num_patterns, self.hidden_dim
            # Xavier-uniform: the original's transformer re-initialises every matrix so.
            patterns = self.param("patterns", nn.initializers.xavier_uniform(), (p, d))
            # Each group: pattern-major, [P, Q] -> P * Q queries sharing the group's anchors.
            boxes = jnp.broadcast_to(boxes.reshape(groups, 1, q, 4), (groups, p, q, 4))
            tgt = jnp.broadcast_to(patterns[None, :, None, :], (groups, p, q, d))
            per_group = p * q
            tgt = jnp.broadcast_to(tgt.reshape(1, -1, d).astype(self.dtype or jnp.float32),
                                   (batch_size, groups * per_group, d))
        boxes = jnp.broadcast_to(boxes.reshape(1, -1, 4), (batch_size, groups * per_group, 4))
        mask = group_self_attn_mask(groups, per_group) if groups > 1 else None
        return {"query_pos": None, "tgt": tgt, "reference_points": boxes,
                "self_attn_mask": mask, "num_groups": groups}
