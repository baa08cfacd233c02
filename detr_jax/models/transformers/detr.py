"""DETR's transformer encoder and decoder (post-norm by default, pre-norm optional).

Names mirror the PyTorch original: `encoder_layers_N/{self_attn,ffn/linear1,ffn/linear2,norm1,
norm2}`, `decoder_layers_N/{self_attn,multihead_attn,ffn/...,norm1,norm2,norm3}`, `decoder_norm`
(and `encoder_norm` with pre-norm). Sequences are batch-major: [B, L, D]; masks are True on real
keys (see detr_jax/models/transformers/layers.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.transformers.layers import DropPath, FeedForward, MultiHeadAttention


class _LayerBase(nn.Module):
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    drop_path: float = 0.0
    pre_norm: bool = False
    dtype: Any = None
    attention_impl: str = "xla"

    def _attn(self, name):
        return MultiHeadAttention(
            self.hidden_dim, self.num_heads, self.dropout, self.dtype, self.attention_impl,
            name=name,
        )

    def _residual(self, x, y, norm, deterministic, name):
        y = nn.Dropout(self.dropout, name=f"dropout_{name}")(y, deterministic=deterministic)
        x = x + DropPath(self.drop_path, name=f"drop_path_{name}")(y, deterministic)
        return x if self.pre_norm else norm(x)


class EncoderLayer(_LayerBase):
    @nn.compact
    def __call__(self, src, key_mask, pos, deterministic: bool = True):
        """src, pos [B, N, D]; key_mask [B, N] -> [B, N, D]."""
        norm1 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")
        norm2 = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")
        x = norm1(src) if self.pre_norm else src
        qk = x + pos
        y = self._attn("self_attn")(qk, qk, x, key_mask=key_mask, deterministic=deterministic)
        src = self._residual(src, y, norm1, deterministic, "1")
        x = norm2(src) if self.pre_norm else src
        ffn = FeedForward(
            self.hidden_dim, self.dim_feedforward, self.dropout, self.dtype, name="ffn"
        )
        y = ffn(x, deterministic)
        return self._residual(src, y, norm2, deterministic, "2")


class DecoderLayer(_LayerBase):
    @nn.compact
    def __call__(
        self,
        tgt,
        memory,
        memory_mask,
        pos,
        query_pos,
        self_attn_mask=None,
        deterministic: bool = True,
    ):
        """tgt, query_pos [B, Q, D]; memory, pos [B, N, D]; memory_mask [B, N] -> [B, Q, D]."""
        norms = [nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=f"norm{i}") for i in (1, 2, 3)]
        x = norms[0](tgt) if self.pre_norm else tgt
        qk = x + query_pos
        y = self._attn("self_attn")(
            qk, qk, x, attn_mask=self_attn_mask, deterministic=deterministic
        )
        tgt = self._residual(tgt, y, norms[0], deterministic, "1")
        x = norms[1](tgt) if self.pre_norm else tgt
        y = self._attn("multihead_attn")(
            x + query_pos, memory + pos, memory, key_mask=memory_mask, deterministic=deterministic
        )
        tgt = self._residual(tgt, y, norms[1], deterministic, "2")
        x = norms[2](tgt) if self.pre_norm else tgt
        ffn = FeedForward(
            self.hidden_dim, self.dim_feedforward, self.dropout, self.dtype, name="ffn"
        )
        y = ffn(x, deterministic)
        return self._residual(tgt, y, norms[2], deterministic, "3")


class DetrTransformer(nn.Module):
    """Encoder over the flattened feature map, decoder over the object queries.

    DropPath rates rise linearly with depth from 0 to `drop_path` (encoder and decoder each).
    `remat_encoder` / `remat_decoder` rematerialise each layer in the backward pass
    (`nn.remat`: activations inside a layer are recomputed instead of stored); parameter names
    and results are unchanged.
    """

    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    drop_path: float = 0.0
    pre_norm: bool = False
    dtype: Any = None
    attention_impl: str = "xla"
    remat_encoder: bool = False
    remat_decoder: bool = False

    @nn.compact
    def __call__(
        self, memory_in: dict[str, Any], queries: dict[str, Any], train: bool = False,
        heads: Any = None,
    ) -> dict[str, jax.Array]:
        """Runs encoder and decoder (containers as in docs/interfaces.md).

        Args:
          memory_in: the neck's output: `tokens` [B, N, D], `pos` [B, N, D] and `mask` bool
            [B, N] (True on real positions).
          queries: the query set: `query_pos` [B, Q, D], `tgt` [B, Q, D] or None (zeros, as in
            the original) and `self_attn_mask` [B or 1, Q, Q] or None (True = allowed).
          heads: the detector's heads, unused (DETR's heads read `hs` only).

        Returns:
          `hs` [L, B, Q, D] (every decoder layer, each through the shared final norm) and
          `memory` [B, N, D].
        """
        src, src_mask, pos = memory_in["tokens"], memory_in["mask"], memory_in["pos"]
        query_pos, tgt = queries["query_pos"], queries.get("tgt")
        self_attn_mask = queries.get("self_attn_mask")
        det = not train
        kw = dict(
            hidden_dim=self.hidden_dim,
            num_heads=self.nheads,
            dim_feedforward=self.dim_feedforward,
            dropout=self.dropout,
            pre_norm=self.pre_norm,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
        )
        # `deterministic` is a Python bool: static for nn.remat (argnum 0 is the module).
        enc_cls, dec_cls = EncoderLayer, DecoderLayer
        if self.remat_encoder:
            enc_cls = nn.remat(EncoderLayer, static_argnums=(4,))
        if self.remat_decoder:
            dec_cls = nn.remat(DecoderLayer, static_argnums=(7,))

        def rate(i, n):
            return self.drop_path * i / max(n - 1, 1)

        x = src
        for i in range(self.enc_layers):
            layer = enc_cls(
                drop_path=rate(i, self.enc_layers), name=f"encoder_layers_{i}", **kw
            )
            x = layer(x, src_mask, pos, det)
        if self.pre_norm:
            x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="encoder_norm")(x)
        memory = x

        y = jnp.zeros_like(query_pos) if tgt is None else tgt
        dec_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_norm")
        hs = []
        for i in range(self.dec_layers):
            layer = dec_cls(
                drop_path=rate(i, self.dec_layers), name=f"decoder_layers_{i}", **kw
            )
            y = layer(y, memory, src_mask, pos, query_pos, self_attn_mask, det)
            hs.append(dec_norm(y))
        return {"hs": jnp.stack(hs), "memory": memory}
