"""DETR's transformer encoder and decoder (post-norm by default, pre-norm optional).

Names mirror the PyTorch original: `encoder/layers_N/{self_attn,linear1,linear2,norm1,norm2}`,
`decoder/layers_N/{self_attn,multihead_attn,linear1,linear2,norm1,norm2,norm3}`, `decoder/norm`.
Each attention holds `q_proj`, `k_proj`, `v_proj`, `out_proj` (PyTorch's packed `in_proj_weight`
splits into the first three). Sequences are batch-major: [B, L, D].

Masks are boolean with True meaning "attend" / "real": `key_mask` [B, Lk] marks real keys (the
flattened padding mask); `attn_mask` [B or 1, Lq, Lk] restricts query-key pairs (e.g. between
DN-DETR query groups). Attention logits and softmax are computed in float32; masked logits get a
large finite negative value so that a fully masked row (a filler image) stays finite.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_xavier = nn.initializers.xavier_uniform()
_NEG = -1e9


def drop_path(x: jax.Array, rate: float, deterministic: bool, rng: jax.Array | None) -> jax.Array:
    """Stochastic depth: drops the whole residual branch per sample. x [B, ...]."""
    if deterministic or rate <= 0.0:
        return x
    keep = 1.0 - rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng, keep, shape)
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class DropPath(nn.Module):
    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate <= 0.0:
            return x
        return drop_path(x, self.rate, False, self.make_rng("droppath"))


ATTENTION_CHOICES = ("xla", "dot_product", "cudnn")


def attention_weights(q: jax.Array, k: jax.Array, allowed: jax.Array | None) -> jax.Array:
    """The explicit path's weights: q [B,Lq,H,c], k [B,Lk,H,c], allowed bool broadcastable to
    [B,H,Lq,Lk] (True = attend) or None -> float32 [B,H,Lq,Lk]. Logits and softmax are float32
    whatever the compute dtype; masked logits get -1e9 (a fully masked row stays finite)."""
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(q.shape[-1]))
    if allowed is not None:
        logits = jnp.where(allowed, logits, _NEG)
    return jax.nn.softmax(logits, axis=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention as torch.nn.MultiheadAttention (dropout on the attention weights).

    `impl` picks the attention core: "xla" (explicit einsums, float32 logits and softmax),
    "dot_product" (`jax.nn.dot_product_attention`, its XLA path: float32 logits and softmax too)
    or "cudnn" (the same function with implementation="cudnn": cuDNN fused flash attention, GPU
    only, bfloat16/float16 inputs). The fused cores return no weights and have no dropout, so the
    explicit path is used whenever attention dropout is active (training with dropout > 0) or the
    `intermediates` collection is mutable (attention maps are asked for, see
    detr_jax/inference.py). All three treat a fully masked row alike (uniform weights, finite).
    """

    hidden_dim: int
    num_heads: int
    dropout: float = 0.0
    dtype: Any = None
    impl: str = "xla"

    @nn.compact
    def __call__(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        key_mask: jax.Array | None = None,
        attn_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """query [B,Lq,D], key/value [B,Lk,D] -> [B,Lq,D]."""
        d, h = self.hidden_dim, self.num_heads
        if d % h:
            raise ValueError(f"model.hidden_dim={d} must be divisible by model.nheads={h}")
        if self.impl not in ATTENTION_CHOICES:
            raise ValueError(f"model.attention_impl={self.impl!r}; choose one of "
                             f"{ATTENTION_CHOICES}")

        def proj(name):
            return nn.Dense(d, kernel_init=_xavier, dtype=self.dtype, name=name)

        b, lq, lk = query.shape[0], query.shape[1], key.shape[1]
        q = proj("q_proj")(query).reshape(b, lq, h, d // h)
        k = proj("k_proj")(key).reshape(b, lk, h, d // h)
        v = proj("v_proj")(value).reshape(b, lk, h, d // h)
        allowed = None
        if key_mask is not None:
            allowed = key_mask[:, None, None, :]
        if attn_mask is not None:
            am = attn_mask[:, None, :, :]
            allowed = am if allowed is None else jnp.logical_and(allowed, am)
        explicit = (
            self.impl == "xla"
            or (self.dropout > 0.0 and not deterministic)
            or self.is_mutable_collection("intermediates")
        )
        if explicit:
            weights = attention_weights(q, k, allowed)
            self.sow("intermediates", "attention_weights", weights.mean(axis=1))
            weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
            out = jnp.einsum("bhqk,bkhc->bqhc", weights.astype(v.dtype), v)
        else:
            if allowed is not None and self.impl == "cudnn":
                allowed = jnp.broadcast_to(allowed, (allowed.shape[0], 1, lq, lk))
            out = jax.nn.dot_product_attention(
                q, k, v, mask=allowed, implementation="cudnn" if self.impl == "cudnn" else None
            )
        return nn.Dense(d, kernel_init=_xavier, dtype=self.dtype, name="out_proj")(
            out.reshape(b, lq, d)
        )


class FeedForward(nn.Module):
    """linear1 -> ReLU -> dropout -> linear2 (the caller adds dropout and the residual)."""

    hidden_dim: int
    dim_feedforward: int
    dropout: float
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        y = nn.Dense(self.dim_feedforward, kernel_init=_xavier, dtype=self.dtype, name="linear1")(x)
        y = nn.Dropout(self.dropout)(nn.relu(y), deterministic=deterministic)
        return nn.Dense(self.hidden_dim, kernel_init=_xavier, dtype=self.dtype, name="linear2")(y)


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


class Transformer(nn.Module):
    """Encoder over the flattened feature map, decoder over the object queries.

    DropPath rates rise linearly with depth from 0 to `drop_path` (encoder and decoder each).
    `remat_encoder` / `remat_decoder` rematerialise each layer in the backward pass
    (`nn.remat`: activations inside a layer are recomputed instead of stored); parameter names
    and results are unchanged.
    """

    hidden_dim: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
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
        self,
        src: jax.Array,
        src_mask: jax.Array,
        pos: jax.Array,
        query_pos: jax.Array,
        tgt: jax.Array | None = None,
        self_attn_mask: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Runs encoder and decoder.

        Args:
          src: [B, N, D] projected features; src_mask: [B, N] True on real positions.
          pos: [B, N, D] position embedding of the features.
          query_pos: [B, Q, D] query embeddings (learned object queries, plus any extra groups).
          tgt: [B, Q, D] decoder input (zeros, as in the original, when None).
          self_attn_mask: [B or 1, Q, Q] optional decoder self-attention mask (True = allowed).

        Returns:
          hs [L, B, Q, D] (every decoder layer, each through the shared final norm) and
          memory [B, N, D].
        """
        det = not train
        kw = dict(
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
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
        for i in range(self.num_encoder_layers):
            layer = enc_cls(
                drop_path=rate(i, self.num_encoder_layers), name=f"encoder_layers_{i}", **kw
            )
            x = layer(x, src_mask, pos, det)
        if self.pre_norm:
            x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="encoder_norm")(x)
        memory = x

        y = jnp.zeros_like(query_pos) if tgt is None else tgt
        dec_norm = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="decoder_norm")
        hs = []
        for i in range(self.num_decoder_layers):
            layer = dec_cls(
                drop_path=rate(i, self.num_decoder_layers), name=f"decoder_layers_{i}", **kw
            )
            y = layer(y, memory, src_mask, pos, query_pos, self_attn_mask, det)
            hs.append(dec_norm(y))
        return jnp.stack(hs), memory
