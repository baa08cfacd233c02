"""DINO's encoder-decoder (Zhang et al., 2022): Deformable DETR's encoder and two-stage
proposals, an anchor-box decoder (DAB-DETR's positional queries), mixed query selection,
look-forward-twice and denoising queries.

- Query selection: every encoder token's proposal is scored by the encoder head; the top Q by
  the best class logit (`select_by="max"`, DINO; "first": Deformable DETR's first logit) give
  the anchors. Their content is the query generator's learned `tgt` (mixed selection,
  queries/dino.py), or, when it gives none, `pos_trans` of the proposals' sine embedding
  (pure selection, as two-stage Deformable DETR).
- Anchor decoder: before each layer the positional query is `ref_point_head` (a 2-layer MLP)
  of the sine embedding (position_encoding.box_sine_embedding) of the current anchor box
  (scaled to the first level's valid region); the layer samples around the 4-D box on every
  level, and its box head refines the anchor (sigmoid(delta + inverse_sigmoid(anchor))).
- Look-forward-twice (`look_forward_twice`): the next layer starts from the refined box with its
  gradient stopped, but layer i's prediction is refined from layer i-1's box WITH its gradient
  (`references` keep it), so each box head also learns from the next layer's loss. Off: every
  reference is stopped (Deformable DETR's refinement).
- Denoising queries (training): the generator's `dn` content and anchors go first; the
  generator's self-attention mask keeps them apart. Group DETR groups tile the anchors.

No final decoder norm (as Deformable DETR and RT-DETR; DINO's own code norms the outputs it
predicts from but refines from the un-normed ones). Params: the deformable transformer's
(`encoder_layers_N`, `decoder_layers_N`, `enc_output`, `enc_output_norm`) plus
`ref_point_head/layers_{0,1}` and, for pure selection, `pos_trans`, `pos_trans_norm`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.position_encoding import box_sine_embedding
from detr_jax.models.transformers.deformable import (
    DeformableDecoderLayer,
    DeformableTransformer,
    refine_boxes,
    select_proposals,
)
from detr_jax.models.transformers.deformable_attention import scale_to_levels
from detr_jax.models.transformers.two_stage import proposal_position_embedding

_xavier = nn.initializers.xavier_uniform()
SELECT_CHOICES = ("max", "first")


class AnchorPositionHead(nn.Module):
    """DAB-DETR's `ref_point_head`: box sine embedding [.., 2D] -> Dense D, ReLU, Dense D."""

    hidden_dim: int = 256
    dtype: Any = None

    @nn.compact
    def __call__(self, boxes: jax.Array) -> jax.Array:
        """boxes [B, Q, 4] normalised cxcywh -> positional queries [B, Q, D]."""
        d = self.hidden_dim
        x = box_sine_embedding(boxes, d // 2)
        x = nn.relu(nn.Dense(d, kernel_init=_xavier, dtype=self.dtype, name="layers_0")(x))
        return nn.Dense(d, kernel_init=_xavier, dtype=self.dtype, name="layers_1")(x)


class DinoTransformer(DeformableTransformer):
    """DINO-style deformable transformer (always two-stage with box refinement).

    Attributes beyond the deformable transformer's: `select_by` ("max" | "first"),
    `look_forward_twice`, `share_heads` (one class / box head for every decoder layer, as
    DINO; given to the heads through `head_layout()`).
    """

    box_refine: bool = True
    two_stage: bool = True
    select_by: str = "max"
    look_forward_twice: bool = True
    share_heads: bool = True

    _registry_name = "dino"

    def part_problems(self, neck: nn.Module, queries: nn.Module) -> list[str]:
        lines = self._neck_problems(neck)
        if not hasattr(queries, "dn_number"):
            lines.append("model.transformer.name='dino' needs model.queries.name='dino'")
        else:
            lines += queries.part_problems()
        if self.select_by not in SELECT_CHOICES:
            lines.append(f"model.transformer.select_by={self.select_by!r}; choose one of "
                         f"{SELECT_CHOICES}")
        if not (self.box_refine and self.two_stage):
            lines.append("model.transformer.name='dino' always refines boxes and selects "
                         "encoder proposals: box_refine and two_stage must stay True")
        return lines

    def head_layout(self) -> dict[str, Any]:
        return dict(super().head_layout(), share_layers=self.share_heads)

    @nn.compact
    def __call__(self, memory_in: dict[str, Any], queries: dict[str, Any], train: bool = False,
                 heads: Any = None) -> dict[str, Any]:
        """Encoder, query selection and anchor decoder (containers as in docs/interfaces.md).

        Args:
          memory_in: the multi-scale neck's output.
          queries: queries/dino.py's set: `num_queries` Q, `num_groups` K, `tgt` [B, K Q, D]
            or None, `self_attn_mask`, and in training `dn` (`tgt` [B, Q_dn, D],
            `reference_logits` [B, Q_dn, 4]).
          heads: the detector's heads (`box_delta`, `encoder_head`).

        Returns:
          `hs` [L, B, Q', D] (Q' = Q_dn + K Q: the denoising queries first), `memory`
          [B, N, D], `references` (L + 1 arrays [B, Q', 4] normalised cxcywh: the selected
          anchors, then each layer's refined boxes; with look-forward-twice not gradient-
          stopped) and `enc_outputs` (every token's proposal: `pred_logits` [B, N, C],
          `pred_boxes` [B, N, 4]).
        """
        if heads is None:
            raise ValueError("model.transformer.name='dino' needs the detector's heads")
        memory, kw = self._encode(memory_in, train)
        mask, shapes, ratios = memory_in["mask"], memory_in["spatial_shapes"], \
            memory_in["valid_ratios"]
        out: dict[str, Any] = {"memory": memory}
        coords, enc_logits = self._score_proposals(memory, mask, shapes, queries, heads, out)
        scores = enc_logits.max(-1) if self.select_by == "max" else enc_logits[..., 0]
        top = select_proposals(coords, scores, queries["num_queries"])  # [B, Q, 4] logits
        tgt = queries.get("tgt")
        if tgt is None:  # pure query selection: content from the proposals
            embed = nn.Dense(self.hidden_dim, kernel_init=_xavier, dtype=self.dtype,
                             name="pos_trans")(proposal_position_embedding(top, self.hidden_dim))
            tgt = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="pos_trans_norm")(embed)
        groups = int(queries.get("num_groups", 1))
        reference = jnp.tile(jax.nn.sigmoid(top), (1, groups, 1))
        tgt = jnp.broadcast_to(tgt, reference.shape[:2] + tgt.shape[-1:])
        dn = queries.get("dn")
        if dn is not None:
            tgt = jnp.concatenate([dn["tgt"].astype(tgt.dtype), tgt], axis=1)
            reference = jnp.concatenate(
                [jax.nn.sigmoid(dn["reference_logits"].astype(jnp.float32)), reference], axis=1)
        position = AnchorPositionHead(self.hidden_dim, self.dtype, name="ref_point_head")
        attn_mask = queries.get("self_attn_mask")
        refs, hs, y = [reference], [], tgt
        for i in range(self.dec_layers):
            ref_levels = scale_to_levels(reference, ratios)  # [B, Q', levels, 4]
            query_pos = position(ref_levels[:, :, 0])
            layer = DeformableDecoderLayer(num_points=self.dec_points,
                                           name=f"decoder_layers_{i}", **kw)
            y = layer(y, query_pos, ref_levels, memory, mask, shapes, attn_mask, not train)
            hs.append(y)
            refined = refine_boxes(heads.box_delta(i, y), reference)
            reference = jax.lax.stop_gradient(refined)
            refs.append(refined if self.look_forward_twice else reference)
        out.update(hs=jnp.stack(hs), references=tuple(refs))
        return out
