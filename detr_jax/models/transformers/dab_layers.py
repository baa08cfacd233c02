"""DAB-DETR's encoder and decoder layers (post-norm), after Conditional DETR's.

Encoder layer: DETR's (self-attention with the position added to queries and keys, FFN), the
FFN's activation PReLU by default (DAB-DETR's `--transformer_activation prelu`).

Decoder layer: the attention projections live outside the attention cores, so that content and
position are projected separately:
- self-attention: q = sa_qcontent_proj(tgt) + sa_qpos_proj(query_pos), k likewise with the
  k projections, v = sa_v_proj(tgt); D-wide heads.
- conditional cross-attention: per head, the query is [content ; sine position] and the key
  [content ; position]: q_h = [ca_qcontent_proj(tgt) (+ ca_qpos_proj(query_pos) in the first
  layer, or every layer with `keep_query_pos`) ; ca_qpos_sine_proj(query_sine)],
  k_h = [ca_kcontent_proj(memory) (+ ca_kpos_proj(pos), same layers) ; ca_kpos_proj(pos)],
  v = ca_v_proj(memory): 2D-wide queries and keys (scaled by (2D / H) ** -0.5), D-wide values.
- FFN; each block ends in dropout, the residual and a LayerNorm (norm1, norm2, norm3).

Params (the original's names): `sa_{qcontent,qpos,kcontent,kpos,v}_proj`, `self_attn/out_proj`,
`norm1`, `ca_{qcontent,qpos,kcontent,kpos,v,qpos_sine}_proj`, `cross_attn/out_proj`, `norm2`,
`ffn/{linear1,activation,linear2}`, `norm3`; the encoder's `self_attn/{q,k,v,out}_proj`, `norm1`,
`ffn/...`, `norm2`. Sequences are batch-major [B, L, D]; masks are True on real keys.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.torch_init import torch_bias_init
from detr_jax.models.transformers.layers import MultiHeadAttention, attention_weights

ACTIVATIONS = ("prelu", "relu")
_xavier = nn.initializers.xavier_uniform()


def _dense(features: int, fan_in: int, name: str, dtype: Any) -> nn.Dense:
    """A projection as the original initialises it: Xavier-uniform kernel (the transformer's
    `_reset_parameters`), PyTorch's default bias."""
    return nn.Dense(features, kernel_init=_xavier, bias_init=torch_bias_init(fan_in),
                    dtype=dtype, name=name)


class DabFeedForward(nn.Module):
    """linear1 -> activation (PReLU, one learned slope initialised at 0.25, or ReLU) -> dropout
    -> linear2 (the caller adds dropout, the residual and the norm)."""

    hidden_dim: int
    dim_feedforward: int
    dropout: float
    activation: str = "prelu"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.transformer.activation={self.activation!r}; choose one of "
                             f"{ACTIVATIONS}")
        y = _dense(self.dim_feedforward, self.hidden_dim, "linear1", self.dtype)(x)
        if self.activation == "prelu":
            y = nn.PReLU(negative_slope_init=0.25, name="activation")(y)
        else:
            y = nn.relu(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return _dense(self.hidden_dim, self.dim_feedforward, "linear2", self.dtype)(y)


class _Layer(nn.Module):
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation: str = "prelu"
    dtype: Any = None

    def _norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)

    def _add_norm(self, x, y, name: str, deterministic: bool):
        y = nn.Dropout(self.dropout, name=f"dropout_{name}")(y, deterministic=deterministic)
        return self._norm(name)(x + y)

    def _ffn(self, x, deterministic: bool):
        return DabFeedForward(self.hidden_dim, self.dim_feedforward, self.dropout,
                              self.activation, self.dtype, name="ffn")(x, deterministic)


class DabEncoderLayer(_Layer):
    @nn.compact
    def __call__(self, src: jax.Array, key_mask: jax.Array, pos: jax.Array,
                 deterministic: bool = True) -> jax.Array:
        """src, pos [B, N, D] (pos already scaled by the encoder's query_scale); key_mask bool
        [B, N] -> [B, N, D]."""
        qk = src + pos
        y = MultiHeadAttention(self.hidden_dim, self.num_heads, self.attention_dropout,
                               self.dtype, name="self_attn")(
            qk, qk, src, key_mask=key_mask, deterministic=deterministic)
        src = self._add_norm(src, y, "norm1", deterministic)
        return self._add_norm(src, self._ffn(src, deterministic), "norm2", deterministic)


class AttentionCore(nn.Module):
    """Softmax attention on projected heads, then `out_proj`: q [B, Lq, H, c_qk], k [B, Lk, H,
    c_qk], v [B, Lk, H, c_v] -> [B, Lq, D]; logits / sqrt(c_qk) and softmax in float32,
    `allowed` bool broadcastable to [B, H, Lq, Lk] (True = attend) or None. Sows the
    head-averaged weights [B, Lq, Lk] (`intermediates`/`attention_weights`)."""

    hidden_dim: int
    dropout: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, q, k, v, allowed=None, deterministic: bool = True) -> jax.Array:
        weights = attention_weights(q, k, allowed)
        self.sow("intermediates", "attention_weights", weights.mean(axis=1))
        weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhc->bqhc", weights.astype(v.dtype), v)
        b, lq = q.shape[:2]
        return _dense(self.hidden_dim, self.hidden_dim, "out_proj", self.dtype)(
            out.reshape(b, lq, -1))


class DabDecoderLayer(_Layer):
    """One DAB-DETR decoder layer (module docstring); `is_first` or `keep_query_pos` adds the
    positional query and key to the cross-attention's content parts."""

    is_first: bool = False
    keep_query_pos: bool = False

    @nn.compact
    def __call__(self, tgt: jax.Array, query_pos: jax.Array, query_sine: jax.Array,
                 memory: jax.Array, pos: jax.Array, memory_mask: jax.Array,
                 self_attn_mask: jax.Array | None = None,
                 deterministic: bool = True) -> jax.Array:
        """tgt [B, Q, D] (content), query_pos [B, Q, D] (ref_point_head of the anchor),
        query_sine [B, Q, D] (the anchor centre's sine embedding, scaled and width / height
        modulated by the decoder); memory, pos [B, N, D]; memory_mask bool [B, N] (True =
        real); self_attn_mask bool [1 | B, Q, Q] or None (True = attend) -> [B, Q, D]."""
        d, h = self.hidden_dim, self.num_heads
        if d % h:
            raise ValueError(f"model.hidden_dim={d} must be divisible by "
                             f"model.transformer.nheads={h}")
        b, nq, n = tgt.shape[0], tgt.shape[1], memory.shape[1]

        def proj(name, x):
            return _dense(d, d, name, self.dtype)(x)

        def heads(x, length):
            return x.reshape(b, length, h, d // h)

        # Self-attention over the queries.
        q = proj("sa_qcontent_proj", tgt) + proj("sa_qpos_proj", query_pos)
        k = proj("sa_kcontent_proj", tgt) + proj("sa_kpos_proj", query_pos)
        v = proj("sa_v_proj", tgt)
        allowed = None if self_attn_mask is None else self_attn_mask[:, None]
        y = AttentionCore(d, self.attention_dropout, self.dtype, name="self_attn")(
            heads(q, nq), heads(k, nq), heads(v, nq), allowed, deterministic)
        tgt = self._add_norm(tgt, y, "norm1", deterministic)

        # Conditional cross-attention: [content ; position] per head.
        q = proj("ca_qcontent_proj", tgt)
        k = proj("ca_kcontent_proj", memory)
        v = proj("ca_v_proj", memory)
        k_pos = proj("ca_kpos_proj", pos)
        if self.is_first or self.keep_query_pos:
            q = q + proj("ca_qpos_proj", query_pos)
            k = k + k_pos
        q_sine = proj("ca_qpos_sine_proj", query_sine)
        q = jnp.concatenate([heads(q, nq), heads(q_sine, nq)], axis=-1)
        k = jnp.concatenate([heads(k, n), heads(k_pos, n)], axis=-1)
        y = AttentionCore(d, self.attention_dropout, self.dtype, name="cross_attn")(
            q, k, heads(v, n), memory_mask[:, None, None, :], deterministic)
        tgt = self._add_norm(tgt, y, "norm2", deterministic)
        return self._add_norm(tgt, self._ffn(tgt, deterministic), "norm3", deterministic)
