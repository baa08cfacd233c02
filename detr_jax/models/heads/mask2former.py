"""Mask2Former's prediction heads: a linear class head (C + 1, the last "no object") and a mask
embedding MLP whose output is dotted with the pixel decoder's mask features.

The masked-attention decoder calls `mask_logits` on every prediction it makes (the masks
restrict the next layer's attention, transformers/mask2former.py) and hands the stacked masks
over in `decoded["pred_masks"]`; `__call__` adds the class logits and the boxes of the masks
(for box evaluation and the box matching costs; no gradient).

Params (in the detector's scope, the original's names): `class_embed/{kernel,bias}`,
`mask_embed/layers_{0,1,2}/{kernel,bias}` (D -> D -> D -> mask_dim, ReLU between), initialised
as PyTorch's nn.Linear.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.necks.multi_scale import valid_counts
from detr_jax.models.torch_init import torch_dense
from detr_jax.ops.mask_ops import masks_to_boxes


class MaskEmbed(nn.Module):
    """3-layer MLP D -> D -> D -> `out_dim` (the mask features' channels, known at the call)."""

    hidden_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, out_dim: int) -> jax.Array:
        d = self.hidden_dim
        x = nn.relu(torch_dense(d, d, "layers_0", jnp.float32)(x))
        x = nn.relu(torch_dense(d, d, "layers_1", jnp.float32)(x))
        return torch_dense(out_dim, d, "layers_2", jnp.float32)(x)


class Mask2FormerHeads(nn.Module):
    """Class logits and mask logits for every prediction of the masked-attention decoder.

    The heads run in float32 whatever the compute dtype.

    Attributes:
      num_classes: C (set by the builder); hidden_dim: D (set by the builder).
    """

    num_classes: int = 133
    hidden_dim: int = 256

    def setup(self) -> None:
        d = self.hidden_dim
        self.class_embed = torch_dense(self.num_classes + 1, d, "class_embed", jnp.float32)
        self.mask_embed = MaskEmbed(d, name="mask_embed")

    def mask_logits(self, hs: jax.Array, mask_features: jax.Array) -> jax.Array:
        """hs [B, Q, D] (after the decoder norm), mask_features [B, h, w, M] -> mask logits
        float32 [B, Q, h, w]."""
        mf = mask_features.astype(jnp.float32)
        embed = self.mask_embed(hs.astype(jnp.float32), mf.shape[-1])
        return jnp.einsum("bqc,bhwc->bqhw", embed, mf)

    def __call__(self, decoded: dict[str, Any], memory: dict[str, Any],
                 train: bool = False) -> dict[str, jax.Array]:
        """`decoded["hs"]` [L, B, Q, D] and `decoded["pred_masks"]` [L, B, Q, h, w] ->
        `pred_logits` float32 [L, B, Q, C + 1], `pred_masks` float32 [L, B, Q, h, w] (mask
        logits at `memory["mask_stride"]` of the padded canvas) and `pred_boxes` float32
        [L, B, Q, 4]: normalised cxcywh of each mask's cells with sigmoid > 0.5 inside the real
        image (ops/mask_ops.py; zeros for an empty mask; no gradient)."""
        if "pred_masks" not in decoded:
            raise ValueError("model.heads.name='mask2former' needs the masked-attention decoder "
                             "(model.transformer.name='mask2former')")
        logits = self.class_embed(decoded["hs"].astype(jnp.float32))
        masks = decoded["pred_masks"].astype(jnp.float32)
        stride = int(memory.get("mask_stride", 4))
        pixel = memory.get("features", {}).get("input")
        if pixel is not None:
            real_hw = valid_counts(pixel.mask)[:, ::-1]  # (w, h) -> (h, w)
        else:  # no pixel mask: the whole canvas is the image
            b, h, w = masks.shape[1], masks.shape[-2], masks.shape[-1]
            real_hw = jnp.broadcast_to(jnp.asarray([h * stride, w * stride], jnp.float32),
                                       (b, 2))
        boxes = jax.lax.stop_gradient(masks_to_boxes(masks > 0.0, real_hw[:, None], stride))
        return {"pred_logits": logits, "pred_masks": masks, "pred_boxes": boxes}
