"""Deformable DETR's encoder-decoder: deformable self-attention over the multi-scale tokens, and a
decoder of self-attention + deformable cross-attention around per-query reference points.

Options (fundamentalvision/Deformable-DETR): `box_refine` (each decoder layer refines the
previous layer's boxes through the inverse sigmoid with its own box head, and the next layer
samples around the refined box) and `two_stage` (the decoder's queries and reference boxes come
from the top-k per-pixel encoder proposals, two_stage.py). The heads are handed in by the
detector: the decoder calls their box heads for the refinement and the encoder proposals.

Params (under `transformer/`, the original's names): `encoder_layers_N/{self_attn/{sampling_offsets,
attention_weights,value_proj,output_proj},norm1,ffn/{linear1,linear2},norm2}`,
`decoder_layers_N/{self_attn/{q,k,v,out}_proj,norm2,cross_attn/...,norm1,ffn/...,norm3}`,
`reference_points` (one-stage) or `enc_output`, `enc_output_norm`, `pos_trans`, `pos_trans_norm`
(two-stage). No final decoder norm (the original has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.transformers.deformable_attention import (
    MultiScaleDeformableAttention,
    encoder_reference_points,
    scale_to_levels,
)
from detr_jax.models.transformers.layers import FeedForward, MultiHeadAttention
from detr_jax.models.transformers.two_stage import encoder_proposals, proposal_position_embedding
from detr_jax.ops.box_ops import inverse_sigmoid

_xavier = nn.initializers.xavier_uniform()


class _Block(nn.Module):
    hidden_dim: int = 256
    num_heads: int = 8
    num_levels: int = 4
    num_points: int = 4
    dim_feedforward: int = 1024
    dropout: float = 0.1
    dtype: Any = None
    remat_sampling: bool = False
    sampling_chunk: int = 0

    def _norm(self, name):
        return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)

    def _deform(self, name):
        return MultiScaleDeformableAttention(self.hidden_dim, self.num_heads, self.num_levels,
                                             self.num_points, self.dtype, self.remat_sampling,
                                             self.sampling_chunk, name=name)

    def _add(self, x, y, deterministic, name):
        return x + nn.Dropout(self.dropout, name=f"dropout_{name}")(y, deterministic=deterministic)

    def _ffn(self, x, norm, deterministic):
        y = FeedForward(self.hidden_dim, self.dim_feedforward, self.dropout, self.dtype,
                        name="ffn")(x, deterministic)
        return norm(self._add(x, y, deterministic, "ffn"))


class DeformableEncoderLayer(_Block):
    @nn.compact
    def __call__(self, src, pos, reference_points, mask, spatial_shapes, deterministic=True):
        """src, pos [B, N, D]; reference_points [B, N, L, 2]; mask bool [B, N] -> [B, N, D]."""
        y = self._deform("self_attn")(src + pos, reference_points, src, mask, spatial_shapes)
        src = self._norm("norm1")(self._add(src, y, deterministic, "attn"))
        return self._ffn(src, self._norm("norm2"), deterministic)


class DeformableDecoderLayer(_Block):
    @nn.compact
    def __call__(self, tgt, query_pos, reference_points, memory, mask, spatial_shapes,
                 self_attn_mask=None, deterministic=True):
        """tgt, query_pos [B, Q, D]; reference_points [B, Q, L, 2 | 4] (per-level canvas);
        memory [B, N, D], mask bool [B, N]; self_attn_mask bool [1 | B, Q, Q] -> [B, Q, D]."""
        qk = tgt + query_pos
        y = MultiHeadAttention(self.hidden_dim, self.num_heads, self.dropout, self.dtype,
                               name="self_attn")(qk, qk, tgt, attn_mask=self_attn_mask,
                                                 deterministic=deterministic)
        tgt = self._norm("norm2")(self._add(tgt, y, deterministic, "self"))
        y = self._deform("cross_attn")(tgt + query_pos, reference_points, memory, mask,
                                       spatial_shapes)
        tgt = self._norm("norm1")(self._add(tgt, y, deterministic, "cross"))
        return self._ffn(tgt, self._norm("norm3"), deterministic)


def refine_boxes(delta: jax.Array, reference: jax.Array) -> jax.Array:
    """A box head's output [B, Q, 4] applied to reference points [B, Q, 2 | 4] in (0, 1):
    sigmoid(delta + inverse_sigmoid(reference)) on the 4 coordinates, or on the centre only
    (the size is sigmoid(delta)) for 2-D references -> boxes [B, Q, 4] normalised cxcywh."""
    delta = delta.astype(jnp.float32)
    ref = inverse_sigmoid(reference.astype(jnp.float32))
    if reference.shape[-1] == 4:
        return jax.nn.sigmoid(delta + ref)
    return jax.nn.sigmoid(jnp.concatenate([delta[..., :2] + ref, delta[..., 2:]], axis=-1))


class DeformableTransformer(nn.Module):
    """Deformable encoder (`enc_layers`) and decoder (`dec_layers`), `nheads` heads,
    `enc_points` / `dec_points` sampling points per head and level.

    Attributes beyond the widths: `box_refine`, `two_stage` (see the module docstring);
    `remat_sampling` (recompute the deformable sampling in the backward pass) and
    `sampling_chunk` (sample that many queries at a time; 0: all at once): less memory at large
    images, same results; `dtype` (set by the builder).
    """

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    enc_points: int = 4
    dec_points: int = 4
    box_refine: bool = False
    two_stage: bool = False
    remat_sampling: bool = False
    sampling_chunk: int = 0
    dtype: Any = None

    _registry_name = "deformable"

    def part_problems(self, neck: nn.Module, queries: nn.Module) -> list[str]:
        """One line per part this transformer cannot work with (checked at start-up)."""
        lines = self._neck_problems(neck)
        has_proposals = hasattr(queries, "num_queries") and not hasattr(queries, "with_content")
        if self.two_stage and not has_proposals:
            lines.append("model.transformer.two_stage=True needs model.queries.name="
                         "'encoder_proposals' (the queries come from the encoder)")
        if not self.two_stage and not getattr(queries, "with_content", False):
            lines.append("model.transformer.name='deformable' (one-stage) needs "
                         "model.queries.with_content=True (query position and content)")
        return lines

    def _neck_problems(self, neck: nn.Module) -> list[str]:
        if hasattr(neck, "num_levels"):
            return []
        return [f"model.transformer.name={self._registry_name!r} needs model.neck.name="
                "'multi_scale' (levels, valid ratios)"]

    def head_layout(self) -> dict[str, Any]:
        """What the heads must be built with (the builder hands it to them): one prediction per
        decoder layer, per-layer heads with refinement, one more head for the proposals."""
        return {"num_layers": self.dec_layers, "box_refine": self.box_refine,
                "two_stage": self.two_stage, "reference_dim": 4 if self.two_stage else 2}

    @nn.compact
    def __call__(self, memory_in: dict[str, Any], queries: dict[str, Any], train: bool = False,
                 heads: Any = None) -> dict[str, Any]:
        """Runs encoder and decoder (containers as in docs/interfaces.md).

        Args:
          memory_in: the multi-scale neck's output (`tokens`, `pos`, `mask`, `spatial_shapes`,
            `valid_ratios`).
          queries: `query_pos` [B, Q, D] and `tgt` [B, Q, D] (one-stage) or `num_queries`
            (two-stage); `self_attn_mask` [1 | B, Q, Q] or None.
          heads: the detector's heads (`box_delta(layer, hs)`, `encoder_head(x)`), needed by
            `box_refine` and `two_stage`.

        Returns:
          `hs` [L, B, Q, D] (every decoder layer's output), `memory` [B, N, D], `references`
          (L + 1 arrays [B, Q, 2 | 4] in (0, 1), image-relative: what each layer started from,
          then the last layer's refined boxes) and, two-stage, `enc_outputs` (`pred_logits`
          [B, N, C], `pred_boxes` [B, N, 4] normalised cxcywh).
        """
        if (self.box_refine or self.two_stage) and heads is None:
            raise ValueError("model.transformer.box_refine / two_stage need the detector's heads")
        memory, kw = self._encode(memory_in, train)
        mask, shapes, ratios = memory_in["mask"], memory_in["spatial_shapes"], \
            memory_in["valid_ratios"]
        det = not train
        out: dict[str, Any] = {"memory": memory}
        if self.two_stage:
            query_pos, tgt, reference = self._proposals(memory, mask, shapes, queries, heads, out)
        else:
            query_pos, tgt = queries["query_pos"], queries.get("tgt")
            if tgt is None:
                tgt = jnp.zeros_like(query_pos)
            reference = jax.nn.sigmoid(nn.Dense(2, kernel_init=_xavier, dtype=jnp.float32,
                                                name="reference_points")(
                query_pos.astype(jnp.float32)))
        refs, hs = [reference], []
        y = tgt
        for i in range(self.dec_layers):
            layer = DeformableDecoderLayer(num_points=self.dec_points,
                                           name=f"decoder_layers_{i}", **kw)
            y = layer(y, query_pos, scale_to_levels(reference, ratios), memory, mask, shapes,
                      queries.get("self_attn_mask"), det)
            hs.append(y)
            if self.box_refine:
                reference = jax.lax.stop_gradient(refine_boxes(heads.box_delta(i, y), reference))
            refs.append(reference)
        out.update(hs=jnp.stack(hs), references=tuple(refs))
        return out

    def _encode(self, memory_in: dict[str, Any], train: bool) -> tuple[jax.Array, dict]:
        """The deformable encoder over the neck's tokens -> (memory [B, N, D], the layers'
        keyword arguments, for the decoder layers)."""
        src, mask, pos = memory_in["tokens"], memory_in["mask"], memory_in["pos"]
        shapes: Sequence[tuple[int, int]] = memory_in["spatial_shapes"]
        ratios = memory_in.get("valid_ratios")
        if ratios is None or "level_start" not in memory_in:
            raise ValueError(f"model.transformer.name={self._registry_name!r} needs a "
                             "multi-scale neck (model.neck.name='multi_scale')")
        kw = dict(hidden_dim=self.hidden_dim, num_heads=self.nheads, num_levels=len(shapes),
                  dim_feedforward=self.dim_feedforward, dropout=self.dropout, dtype=self.dtype,
                  remat_sampling=self.remat_sampling, sampling_chunk=self.sampling_chunk)
        enc_refs = encoder_reference_points(shapes, ratios)
        x = src
        for i in range(self.enc_layers):
            x = DeformableEncoderLayer(num_points=self.enc_points, name=f"encoder_layers_{i}",
                                       **kw)(x, pos, enc_refs, mask, shapes, not train)
        return x, kw

    def _proposals(self, memory, mask, shapes, queries, heads, out):
        """Two-stage: scores every token's proposal, keeps the top `num_queries` by the first
        class logit -> (query_pos, tgt [B, Q, D], reference boxes [B, Q, 4]); adds
        `enc_outputs` to `out`."""
        d = self.hidden_dim
        coords, enc_logits = self._score_proposals(memory, mask, shapes, queries, heads, out)
        top_coords = select_proposals(coords, enc_logits[..., 0], queries["num_queries"])
        embed = proposal_position_embedding(top_coords, d)
        embed = nn.Dense(2 * d, kernel_init=_xavier, dtype=self.dtype, name="pos_trans")(embed)
        embed = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="pos_trans_norm")(embed)
        return embed[..., :d], embed[..., d:], jax.nn.sigmoid(top_coords)

    def _score_proposals(self, memory, mask, shapes, queries, heads, out):
        """Every token's proposal: (boxes [B, N, 4] inverse-sigmoid cxcywh, class logits
        [B, N, C]) from `enc_output`, its norm and the heads' `encoder_head`; adds
        `enc_outputs` (sigmoid boxes) to `out`."""
        if queries.get("num_queries") is None:
            raise ValueError(f"model.transformer.name={self._registry_name!r} with encoder "
                             "proposals needs a query generator that says `num_queries` "
                             "(model.queries.name='encoder_proposals')")
        proposals, valid = encoder_proposals(mask, shapes)
        feat = jnp.where(valid[..., None], memory, jnp.zeros((), memory.dtype))
        feat = nn.Dense(self.hidden_dim, kernel_init=_xavier, dtype=self.dtype,
                        name="enc_output")(feat)
        feat = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="enc_output_norm")(feat)
        enc_logits, delta = heads.encoder_head(feat)
        coords = delta.astype(jnp.float32) + proposals  # inverse-sigmoid cxcywh
        out["enc_outputs"] = {"pred_logits": enc_logits.astype(jnp.float32),
                              "pred_boxes": jax.nn.sigmoid(coords)}
        return coords, enc_logits


def select_proposals(coords: jax.Array, scores: jax.Array, num_queries: int) -> jax.Array:
    """The top `num_queries` proposals by score: coords [B, N, 4] (inverse-sigmoid cxcywh),
    scores [B, N] -> [B, K, 4] with gradients stopped (K = min(num_queries, N))."""
    k = min(int(num_queries), coords.shape[1])
    _, top = jax.lax.top_k(scores.astype(jnp.float32), k)  # [B, K]
    return jax.lax.stop_gradient(jnp.take_along_axis(coords, top[..., None], axis=1))
