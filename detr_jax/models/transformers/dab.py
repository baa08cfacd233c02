"""DAB-DETR's encoder-decoder (IDEA-Research/DAB-DETR; HF `DabDetrModel`): 4-D anchor boxes as
queries, refined by every decoder layer.

Encoder: before each layer the position embedding is scaled element-wise by an MLP of the
current tokens (`encoder_query_scale`, D -> D -> D), then DETR's post-norm layer (PReLU FFN).

Decoder, per layer l with anchor boxes A_l [B, Q, 4] (normalised cxcywh, A_0 the queries'
`reference_points`; dab_layers.py for the layer itself):
- S = box_sine_embedding(A_l) [B, Q, 2D] (y, x, w, h parts of D/2 each);
  query_pos = ref_point_head(S) (MLP 2D -> D -> D), the self-attention's positional query;
- the cross-attention's positional query is the centre part S[..., :D], times
  query_scale(tgt) (MLP D -> D -> D) from the second layer on, its x half times w_ref / w and
  its y half times h_ref / h, (w_ref, h_ref) = sigmoid(ref_anchor_head(tgt)) (MLP D -> D -> 2):
  width- and height-modulated attention;
- after the layer, the heads' shared box head refines the anchor: A_{l+1} =
  sigmoid(box_delta(l, tgt) + inverse_sigmoid(A_l)) on the layer's output before the final
  norm; the next layer reads A_{l+1} with its gradient stopped.
Every layer's output goes through the shared final norm (`decoder_norm`) for the heads, which
predict layer l's boxes from A_l: boxes_l = sigmoid(box_delta(l, hs_l) + inverse_sigmoid(A_l))
(heads/deformable.py with 4-D references). As in the original, `references` keep their gradient
(only the decoder's own use of them stops it), so a layer's box loss also trains the box head
through the previous layer's refinement.

Params (under `transformer/`): `encoder_query_scale/layers_{0,1}`, `encoder_layers_N/...`,
`encoder_norm` (`pre_norm`: the original's `normalize_before` adds only this final norm),
`query_scale`, `ref_point_head`, `ref_anchor_head` (`layers_{0,1}` each), `decoder_layers_N/...`,
`decoder_norm`. The box head is the heads' (`bbox_embed_0`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.position_encoding import box_sine_embedding
from detr_jax.models.torch_init import MLP
from detr_jax.models.transformers.dab_layers import DabDecoderLayer, DabEncoderLayer
from detr_jax.models.transformers.deformable import refine_boxes


class DabTransformer(nn.Module):
    """DAB-DETR's encoder (`enc_layers`) and anchor-refining decoder (`dec_layers`).

    Attributes:
      hidden_dim: D (set by the builder); nheads: attention heads (encoder and decoder).
      dim_feedforward: FFN width; dropout: after every block and inside the FFN (DAB-DETR: 0.0);
      attention_dropout: on the attention weights (HF's `attention_dropout`).
      activation: "prelu" (DAB-DETR) or "relu" in the FFNs.
      keep_query_pos: the positional query and key join the cross-attention's content parts in
        every layer (default: the first only).
      modulate_hw: width / height modulated cross-attention (`ref_anchor_head`; DAB-DETR: on).
      pre_norm: a LayerNorm after the encoder (the original's `normalize_before`; its layers
        stay post-norm).
      dtype: compute dtype (set by the builder); sine embeddings, anchors and boxes are float32.
    """

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation: str = "prelu"
    keep_query_pos: bool = False
    modulate_hw: bool = True
    pre_norm: bool = False
    dtype: Any = None

    def part_problems(self, neck: nn.Module, queries: nn.Module) -> list[str]:
        """One line per part this transformer cannot work with (checked at start-up)."""
        if not getattr(queries, "reference_boxes", False):
            return ["model.transformer.name='dab' needs anchor-box queries "
                    "(model.queries.name='anchors')"]
        return []

    def head_layout(self) -> dict[str, Any]:
        """One prediction per decoder layer, one box head shared by all layers (it also refines
        the anchors), references that start as 4-D boxes."""
        return {"num_layers": self.dec_layers, "box_refine": False, "two_stage": False,
                "reference_dim": 4}

    def _mlp(self, out: int, fan_in: int, name: str) -> MLP:
        return MLP(self.hidden_dim, out, 2, fan_in, self.dtype, name=name)

    @nn.compact
    def __call__(self, memory_in: dict[str, Any], queries: dict[str, Any], train: bool = False,
                 heads: Any = None) -> dict[str, Any]:
        """Runs encoder and decoder (containers as in docs/interfaces.md).

        Args:
          memory_in: the neck's `tokens` [B, N, D], `pos` [B, N, D], `mask` bool [B, N].
          queries: `reference_points` [B, Q, 4] anchors (normalised cxcywh in (0, 1)), `tgt`
            [B, Q, D] or None (zeros), `self_attn_mask` [1 | B, Q, Q] or None.
          heads: the detector's heads; their `box_delta(layer, hs)` refines the anchors.

        Returns:
          `hs` [L, B, Q, D] (every layer through `decoder_norm`), `memory` [B, N, D] and
          `references`: L + 1 arrays [B, Q, 4] (each layer's starting anchors, then the last
          layer's refinement), normalised cxcywh in (0, 1).
        """
        if heads is None or not hasattr(heads, "box_delta"):
            raise ValueError("model.transformer.name='dab' refines its anchors with the heads' "
                             "box head: use model.heads.name='deformable'")
        anchors = queries.get("reference_points")
        if anchors is None or anchors.shape[-1] != 4:
            raise ValueError("model.transformer.name='dab' needs 4-D anchor boxes "
                             "(model.queries.name='anchors')")
        src, mask, pos = memory_in["tokens"], memory_in["mask"], memory_in["pos"]
        d, det = self.hidden_dim, not train
        kw = dict(hidden_dim=d, num_heads=self.nheads, dim_feedforward=self.dim_feedforward,
                  dropout=self.dropout, attention_dropout=self.attention_dropout,
                  activation=self.activation, dtype=self.dtype)

        x = src
        query_scale = self._mlp(d, d, "encoder_query_scale")
        for i in range(self.enc_layers):
            x = DabEncoderLayer(name=f"encoder_layers_{i}", **kw)(x, mask, pos * query_scale(x),
                                                                  det)
        if self.pre_norm:
            x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="encoder_norm")(x)
        memory = x

        ref = anchors.astype(jnp.float32)
        tgt = queries.get("tgt")
        y = jnp.zeros(ref.shape[:-1] + (d,), self.dtype or jnp.float32) if tgt is None else tgt
        ref_point_head = self._mlp(d, 2 * d, "ref_point_head")
        query_scale = self._mlp(d, d, "query_scale")
        ref_anchor_head = self._mlp(2, d, "ref_anchor_head")
        dec_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_norm")
        refs, hs = [ref], []
        for i in range(self.dec_layers):
            sine = box_sine_embedding(ref, d // 2)  # [B, Q, 2D]: y, x, w, h
            query_pos = ref_point_head(sine.astype(y.dtype))
            centre = sine[..., :d]
            if i > 0:
                centre = centre * query_scale(y).astype(jnp.float32)
            if self.modulate_hw:
                size = jax.nn.sigmoid(ref_anchor_head(y).astype(jnp.float32))  # (w_ref, h_ref)
                scale_y = (size[..., 1] / ref[..., 3])[..., None]
                scale_x = (size[..., 0] / ref[..., 2])[..., None]
                centre = jnp.concatenate([centre[..., : d // 2] * scale_y,
                                          centre[..., d // 2:] * scale_x], axis=-1)
            layer = DabDecoderLayer(is_first=i == 0, keep_query_pos=self.keep_query_pos,
                                    name=f"decoder_layers_{i}", **kw)
            y = layer(y, query_pos, centre.astype(y.dtype), memory, pos, mask,
                      queries.get("self_attn_mask"), det)
            hs.append(dec_norm(y))
            refined = refine_boxes(heads.box_delta(i, y), ref)
            refs.append(refined)
            ref = jax.lax.stop_gradient(refined)
        return {"hs": jnp.stack(hs), "memory": memory, "references": tuple(refs)}
