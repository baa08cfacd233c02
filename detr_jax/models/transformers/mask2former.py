"""Mask2Former's masked-attention decoder over the pixel decoder's multi-scale memory.

Each layer, post-norm as the original: masked cross-attention to one level (layer l reads level
l % 3, coarsest first), then self-attention among the queries, then the FFN. The cross-attention
of layer l may only see the positions where the previous prediction's mask is on: the mask
logits, resized bilinearly to that level (PyTorch's align_corners=False), pass sigmoid >= 0.5;
a query whose mask is empty at that level sees every position (the original's fix for fully
masked rows). A prediction (the heads' class and mask heads on the shared `decoder_norm` of the
queries) is made before the first layer and after every layer: L + 1 predictions, the first
being Mask2Former's first auxiliary output.

The memory's keys get a sine position embedding of each level's canvas; its values get a learned
level embedding added (the original adds `level_embed` to the features, not to the positions).
The queries come from the `learned` generator with content: `query_pos` (HF `queries_embedder`)
and `tgt` (HF `queries_features`).

Params (under `transformer/`): `level_embed` [3, D], `decoder_norm`, `decoder_layers_{i}/
{cross_attn/{q,k,v,out}_proj, norm1, self_attn/{q,k,v,out}_proj, norm2, ffn/{linear1,linear2},
norm3}`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.position_encoding import sine_position_embedding
from detr_jax.models.transformers.layers import ATTENTION_CHOICES, FeedForward, MultiHeadAttention
from detr_jax.ops.interpolate import resize_bilinear


def masked_attention_mask(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Where each query may attend on a level: mask logits [B, Q, H, W] -> bool [B, Q, h * w]
    (True = attend), with the logits resized bilinearly to `size` = (h, w), a position
    blocked where sigmoid < 0.5, and a fully blocked query unblocked everywhere. No gradient."""
    b, q = mask_logits.shape[:2]
    logits = resize_bilinear(mask_logits.astype(jnp.float32), size)
    blocked = (jax.nn.sigmoid(logits) < 0.5).reshape(b, q, size[0] * size[1])
    full = jnp.all(blocked, axis=-1, keepdims=True)
    return jax.lax.stop_gradient(~blocked | full)


class MaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention, self-attention, FFN; each added to its input then LayerNormed."""

    hidden_dim: int
    num_heads: int
    dim_feedforward: int
    dropout: float = 0.0
    dtype: Any = None
    attention_impl: str = "xla"

    def _add_norm(self, x, y, deterministic, name):
        y = nn.Dropout(self.dropout, name=f"dropout_{name}")(y, deterministic=deterministic)
        return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)(x + y)

    @nn.compact
    def __call__(self, tgt, query_pos, memory, memory_pos, cross_mask, self_attn_mask=None,
                 deterministic=True):
        """tgt, query_pos [B, Q, D]; memory, memory_pos [B, N_l, D] (one level); cross_mask bool
        [B, Q, N_l] (True = attend); self_attn_mask bool [1 | B, Q, Q] or None -> [B, Q, D]."""
        d, h = self.hidden_dim, self.num_heads

        def attention(name):
            return MultiHeadAttention(d, h, self.dropout, self.dtype, self.attention_impl,
                                      name=name)

        y = attention("cross_attn")(tgt + query_pos, memory + memory_pos, memory,
                                    attn_mask=cross_mask, deterministic=deterministic)
        tgt = self._add_norm(tgt, y, deterministic, "norm1")
        qk = tgt + query_pos
        y = attention("self_attn")(qk, qk, tgt, attn_mask=self_attn_mask,
                                   deterministic=deterministic)
        tgt = self._add_norm(tgt, y, deterministic, "norm2")
        y = FeedForward(d, self.dim_feedforward, self.dropout, self.dtype, name="ffn")(
            tgt, deterministic)
        return self._add_norm(tgt, y, deterministic, "norm3")


class Mask2FormerTransformer(nn.Module):
    """Mask2Former's decoder: `dec_layers` masked-attention layers (9 in the R50 COCO model,
    the original's DEC_LAYERS 10 counting the prediction before the first layer).

    Attributes:
      hidden_dim: D (set by the builder); nheads: attention heads; dim_feedforward: FFN width
      (2048); dropout: 0.0 in Mask2Former; attention_impl: "xla" | "dot_product" | "cudnn"
      (transformers/layers.py); dtype: compute dtype (set by the builder);
      masked_attention: restrict each layer's cross-attention to the previous prediction's
        masks (Mask2Former); False: plain cross-attention over the whole level (the ablation
        of the Mask2Former paper, Table 4a), the rest unchanged.
    """

    hidden_dim: int = 256
    nheads: int = 8
    dec_layers: int = 9
    dim_feedforward: int = 2048
    dropout: float = 0.0
    attention_impl: str = "xla"
    dtype: Any = None
    masked_attention: bool = True

    def __post_init__(self) -> None:
        if self.attention_impl not in ATTENTION_CHOICES:
            raise ValueError(f"model.transformer.attention_impl={self.attention_impl!r}; choose "
                             f"one of {ATTENTION_CHOICES}")
        if self.dec_layers < 0:
            raise ValueError(f"model.transformer.dec_layers={self.dec_layers} must be >= 0")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"model.hidden_dim={self.hidden_dim} must be divisible by "
                             f"model.transformer.nheads={self.nheads}")
        super().__post_init__()

    def part_problems(self, neck: nn.Module, queries: nn.Module) -> list[str]:
        """One line per part this transformer cannot work with (checked at start-up)."""
        lines = []
        if not hasattr(neck, "mask_dim"):
            lines.append("model.transformer.name='mask2former' needs model.neck.name="
                         "'mask2former_pixel_decoder' (multi-scale memory and mask features)")
        if not getattr(queries, "with_content", False):
            lines.append("model.transformer.name='mask2former' needs model.queries.name="
                         "'learned' with with_content=True (query position and content)")
        return lines

    @nn.compact
    def __call__(self, memory_in: dict[str, Any], queries: dict[str, Any], train: bool = False,
                 heads: Any = None) -> dict[str, Any]:
        """Runs the decoder, predicting masks with the heads after each layer.

        Args:
          memory_in: the pixel decoder's output: `tokens` [B, N, D] with `spatial_shapes`
            (levels coarsest first) and `mask_features` [B, H/4, W/4, mask_dim].
          queries: `query_pos` [B, Q, D], `tgt` [B, Q, D] (None: zeros), `self_attn_mask`.
          heads: the detector's heads; `heads.mask_logits(x [B, Q, D], mask_features)` ->
            [B, Q, H/4, W/4] gives the masks that restrict the next layer's attention.

        Returns:
          `hs` [L + 1, B, Q, D] (`decoder_norm` of the queries before the first layer and after
          each layer), `pred_masks` float32 [L + 1, B, Q, H/4, W/4] (their mask logits) and
          `memory` [B, N, D].
        """
        if heads is None or not hasattr(heads, "mask_logits"):
            raise ValueError("model.transformer.name='mask2former' needs mask heads "
                             "(model.heads.name='mask2former')")
        if "mask_features" not in memory_in:
            raise ValueError("model.transformer.name='mask2former' needs a pixel decoder "
                             "(model.neck.name='mask2former_pixel_decoder')")
        tokens, shapes = memory_in["tokens"], tuple(memory_in["spatial_shapes"])
        mask_features = memory_in["mask_features"]
        b, _, d = tokens.shape
        level_embed = self.param("level_embed", nn.initializers.normal(1.0), (len(shapes), d))
        memory, memory_pos, start = [], [], 0
        for lvl, (h, w) in enumerate(shapes):
            memory.append(tokens[:, start:start + h * w] + level_embed[lvl].astype(tokens.dtype))
            pos = sine_position_embedding(jnp.ones((b, h, w), bool), d)
            memory_pos.append(pos.reshape(b, h * w, d).astype(tokens.dtype))
            start += h * w
        query_pos, tgt = queries["query_pos"], queries.get("tgt")
        if tgt is None:
            tgt = jnp.zeros_like(query_pos)
        norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_norm")
        hs = [norm(tgt)]
        masks = [heads.mask_logits(hs[0], mask_features)]
        y = tgt
        for i in range(self.dec_layers):
            lvl = i % len(shapes)
            cross_mask = (masked_attention_mask(masks[-1], shapes[lvl]) if self.masked_attention
                          else None)
            y = MaskedAttentionDecoderLayer(
                d, self.nheads, self.dim_feedforward, self.dropout, self.dtype,
                self.attention_impl, name=f"decoder_layers_{i}")(
                y, query_pos, memory[lvl], memory_pos[lvl], cross_mask,
                queries.get("self_attn_mask"), not train)
            hs.append(norm(y))
            masks.append(heads.mask_logits(hs[-1], mask_features))
        return {"hs": jnp.stack(hs), "pred_masks": jnp.stack(masks).astype(jnp.float32),
                "memory": tokens}
