"""DETR's segmentation head (the original's DETRsegm): DETR's class and box heads, plus a mask
logit map per query from the last decoder layer.

    hs[-1] [B, Q, D], memory [B, N, D] -> bbox_attention: per-head attention maps of each query
        over the encoder memory, softmax over heads x positions jointly -> [B, Q, h, w, nheads]
    concat(input_proj(C5) [B, h, w, D] (shared by the queries), the maps) -> mask_head:
        3x3 conv + GroupNorm + ReLU twice at stride 32, then three FPN steps (1x1 adapter of
        C4, C3, C2 + nearest upsampling, 3x3 conv + GN + ReLU) -> 3x3 conv -> [B, Q, H/4, W/4]

Params (in the detector's scope, the original's state_dict names): `class_embed`, `bbox_embed`
(ClassBoxHeads, so a detection checkpoint loads into this head), `bbox_attention/{q,k}_linear`,
`mask_head/lay{1..5}`, `mask_head/gn{1..5}`, `mask_head/adapter{1,2,3}`, `mask_head/out_lay`.
Training recipe (the original's): train the detector, then the mask head on the frozen detector
(`config.freeze = "detector"`, detr_jax/optim.py).

Config: `model.heads = {"name": "detr_segm", "nheads": 8, "feature_levels": ("C2", "C3", "C4")}`
(the levels must be listed there: the builder builds them; see models/__init__.py `_levels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.backbones.base import resize_mask_nearest
from detr_jax.models.heads.box import ClassBoxHeads

# The original's MaskHeadSmallConv convs: kaiming_uniform(a=1) (bound sqrt(3 / fan_in)), bias 0.
_conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
_DEFAULT_LEVELS = ("C2", "C3", "C4")


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 (the original), fewer on narrow layers (as HF: min(8, channels))."""
    return min(8, channels)


def mask_head_problems(hidden_dim: int, nheads: int) -> list[str]:
    """One line per width the mask head cannot take (empty when none)."""
    lines = []
    if nheads < 1 or hidden_dim % nheads:
        lines.append(f"model.heads.nheads={nheads} must divide model.hidden_dim={hidden_dim}")
    if hidden_dim % 16:
        lines.append(f"model.hidden_dim={hidden_dim}: DETR's mask head needs a multiple of 16")
    dims = (hidden_dim + nheads, *(hidden_dim // k for k in (2, 4, 8, 16)))
    bad = [c for c in dims if c < 1 or c % _groups(c)]
    if not lines and bad:
        lines.append(f"model.hidden_dim + model.heads.nheads = {hidden_dim + nheads}: the mask "
                     f"head's GroupNorm(8) needs a multiple of 8 (widths {dims})")
    return lines


class MHAttentionMap(nn.Module):
    """Attention weights only (no values): queries [B, Q, D] over keys [B, N, D].

    q, k linear maps, q scaled by (D / nheads)^-0.5, logits at masked keys set to the float32
    minimum, softmax over all heads and positions of a query jointly (as the original).
    Params `q_linear`, `k_linear` (xavier-uniform kernels, zero biases). float32.
    """

    hidden_dim: int
    nheads: int

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, key_mask: jax.Array) -> jax.Array:
        """q [B, Q, D], k [B, N, D], key_mask bool [B, N] (True = real) -> [B, Q, nheads, N]."""
        d, h = self.hidden_dim, self.nheads
        f32 = jnp.float32

        def linear(name):
            return nn.Dense(d, kernel_init=nn.initializers.xavier_uniform(),
                            bias_init=nn.initializers.zeros, dtype=f32, name=name)

        b, nq, _ = q.shape
        qh = linear("q_linear")(q.astype(f32)).reshape(b, nq, h, d // h)
        kh = linear("k_linear")(k.astype(f32)).reshape(b, k.shape[1], h, d // h)
        logits = jnp.einsum("bqnc,bknc->bqnk", qh * (d / h) ** -0.5, kh)
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(f32).min)
        weights = jax.nn.softmax(logits.reshape(b, nq, -1), axis=-1)
        return weights.reshape(logits.shape)


class _SharedPlusPerQueryConv(nn.Module):
    """A 3x3 conv over concat(shared [B, h, w, Cs], per_query [B, Q, h, w, Cq]) along channels,
    computed as conv(shared) once per image + conv(per_query) per query (the same sum; the
    shared part is not repeated Q times). Params `kernel` [3, 3, Cs + Cq, F], `bias` [F]."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, shared: jax.Array, per_query: jax.Array) -> jax.Array:
        """-> [B * Q, h, w, F] (the compute dtype)."""
        b, nq, h, w, cq = per_query.shape
        cs = shared.shape[-1]
        kernel = self.param("kernel", _conv_init, (3, 3, cs + cq, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or jnp.float32

        def conv(x, k):
            return jax.lax.conv_general_dilated(
                x.astype(dtype), k.astype(dtype), (1, 1), ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        y_shared = conv(shared, kernel[:, :, :cs]) + bias.astype(dtype)
        y = conv(per_query.reshape(b * nq, h, w, cq), kernel[:, :, cs:])
        y = y.reshape(b, nq, h, w, self.features) + y_shared[:, None]
        return y.reshape(b * nq, h, w, self.features)


class MaskHeadSmallConv(nn.Module):
    """The original's FPN mask head (widths D + nheads, D/2, D/4, D/8, D/16, then 1)."""

    hidden_dim: int
    nheads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, src_proj: jax.Array, attn: jax.Array,
                 fpns: Sequence[jax.Array]) -> jax.Array:
        """src_proj [B, h, w, D] (input_proj of C5), attn [B, Q, h, w, nheads] (the attention
        maps), fpns: (C4, C3, C2) maps [B, h_i, w_i, C_i], coarse to fine -> mask logits
        float32 [B, Q, h_C2, w_C2]."""
        d = self.hidden_dim
        b, nq = attn.shape[:2]
        widths = (d + self.nheads, d // 2, d // 4, d // 8, d // 16)

        def conv(features, k, name):
            return nn.Conv(features, (k, k), padding=k // 2, kernel_init=_conv_init,
                           bias_init=nn.initializers.zeros, dtype=self.dtype, name=name)

        def gn_relu(x, name):
            c = x.shape[-1]
            return nn.relu(nn.GroupNorm(num_groups=_groups(c), epsilon=1e-5, dtype=self.dtype,
                                        use_fast_variance=False, name=name)(x))

        x = _SharedPlusPerQueryConv(widths[0], self.dtype, name="lay1")(src_proj, attn)
        x = gn_relu(x, "gn1")
        x = gn_relu(conv(widths[1], 3, "lay2")(x), "gn2")
        for i, fpn in enumerate(fpns):
            adapted = conv(widths[i + 1], 1, f"adapter{i + 1}")(fpn)  # once per image
            hi, wi, c = adapted.shape[1:]
            x = resize_mask_nearest(x, hi, wi)  # torch F.interpolate(mode="nearest") indices
            x = (x.reshape(b, nq, hi, wi, c) + adapted[:, None]).reshape(b * nq, hi, wi, c)
            x = gn_relu(conv(widths[i + 2], 3, f"lay{i + 3}")(x), f"gn{i + 3}")
        out = conv(1, 3, "out_lay")(x)
        return out.reshape(b, nq, *out.shape[1:3]).astype(jnp.float32)


class DetrSegmHeads(nn.Module):
    """ClassBoxHeads' outputs and `pred_masks` float32 [1, B, Q, H/4, W/4] (mask logits at
    stride 4 of the padded canvas, for the last decoder layer only: docs/interfaces.md).

    Attributes:
      num_classes, hidden_dim: set by the builder (as ClassBoxHeads).
      nheads: attention heads of `bbox_attention` (the original: the transformer's).
      feature_levels: the backbone levels the FPN reads, finest first (C2, C3, C4); the
        builder builds them and the detector hands them over as `memory["features"]`.
      dense_aux: ClassBoxHeads' dense class head.
      dtype: compute dtype of the mask head's convolutions (set by the builder from
        `model.dtype`); the class / box heads and the attention maps run in float32.
    """

    num_classes: int = 91
    hidden_dim: int = 256
    nheads: int = 8
    feature_levels: Sequence[str] = _DEFAULT_LEVELS
    dense_aux: bool = False
    dtype: Any = None

    def setup(self) -> None:
        lines = mask_head_problems(self.hidden_dim, self.nheads)
        if len(tuple(self.feature_levels)) != 3:
            lines.append(f"model.heads.feature_levels={tuple(self.feature_levels)}: DETR's mask "
                         f"head reads three backbone levels, finest first, e.g. {_DEFAULT_LEVELS}")
        if lines:
            raise ValueError("; ".join(lines))
        self.boxes = ClassBoxHeads(num_classes=self.num_classes, hidden_dim=self.hidden_dim,
                                   dense_aux=self.dense_aux)
        nn.share_scope(self, self.boxes)  # `class_embed`, `bbox_embed` at the detector's level
        self.bbox_attention = MHAttentionMap(self.hidden_dim, self.nheads)
        self.mask_head = MaskHeadSmallConv(self.hidden_dim, self.nheads, self.dtype)

    def __call__(self, decoded: dict[str, Any], memory: dict[str, Any],
                 train: bool = False) -> dict[str, jax.Array]:
        """`decoded` {`hs` [L, B, Q, D], `memory` [B, N, D]}, `memory` the neck's output
        (`tokens` = input_proj(C5) [B, N, D], `mask` [B, N], `spatial_shapes` ((h, w),),
        `features` {level: Feature}) -> `pred_logits`, `pred_boxes` (ClassBoxHeads) and
        `pred_masks` float32 [1, B, Q, H4, W4] (H4, W4 = the finest level's map size)."""
        outputs = dict(self.boxes(decoded, memory, train=train))
        feats = memory.get("features", {})
        missing = [lv for lv in self.feature_levels if lv not in feats]
        if missing:
            raise ValueError(f"model.heads.feature_levels: backbone levels {missing} were not "
                             f"built; list them in model.heads.feature_levels "
                             f"(e.g. {_DEFAULT_LEVELS})")
        ((h, w),) = memory["spatial_shapes"]
        tokens = memory["tokens"]
        b, n, d = tokens.shape
        if n != h * w or d != self.hidden_dim:
            raise ValueError(f"detr_segm heads: tokens {tokens.shape} do not fit one "
                             f"{(h, w)} map of model.hidden_dim={self.hidden_dim}")
        attn = self.bbox_attention(decoded["hs"][-1], decoded["memory"], memory["mask"])
        attn = attn.reshape(b, -1, self.nheads, h, w).transpose(0, 1, 3, 4, 2)
        fpns = [feats[lv].features for lv in reversed(tuple(self.feature_levels))]
        masks = self.mask_head(tokens.reshape(b, h, w, d), attn, fpns)
        outputs["pred_masks"] = masks[None]
        return outputs
