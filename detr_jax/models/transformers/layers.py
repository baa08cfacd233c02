"""Transformer building blocks shared by the detectors' encoders and decoders: multi-head
attention (three cores), the feed-forward block and DropPath. Sequences are batch-major [B, L, D].

Each attention holds `q_proj`, `k_proj`, `v_proj`, `out_proj` (PyTorch's packed `in_proj_weight`
splits into the first three).

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
            raise ValueError(f"model.hidden_dim={d} must be divisible by "
                             f"model.transformer.nheads={h}")
        if self.impl not in ATTENTION_CHOICES:
            raise ValueError(f"model.transformer.attention_impl={self.impl!r}; choose one of "
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
