"""MaskFormer's heads (Cheng et al. 2021): on every decoder layer a linear class head (C + 1,
softmax, the last "no object") and a 3-layer MLP mask embedding, dotted with the pixel
decoder's per-pixel embeddings into mask logits; boxes are derived from the masks.

Reads `memory_in["mask_features"]` [B, h, w, E] (stride 4; the `maskformer_fpn` neck) and, for
the boxes' image sizes, the pixel mask the detector hands in (`memory_in["features"]["input"]`).

Params (in the detector's scope, the original's names): `class_embed/{kernel,bias}`,
`mask_embed/layers_{0,1,2}/{kernel,bias}`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.torch_init import MLP, torch_dense
from detr_jax.ops.mask_ops import masks_to_boxes, real_image_size

MASK_STRIDE = 4  # pred_masks are at stride 4 of the padded canvas (docs/interfaces.md)


class MaskFormerHeads(nn.Module):
    """Class logits, mask logits and mask-derived boxes for each decoder layer.

    The heads run in float32 whatever the compute dtype (as the box heads).

    Attributes:
      num_classes: C (set by the builder from `config.num_classes`).
      hidden_dim: D (set by the builder).
      mask_layers: layers of the mask-embedding MLP (3 in MaskFormer).
    """

    num_classes: int = 133
    hidden_dim: int = 256
    mask_layers: int = 3

    @nn.compact
    def __call__(self, decoded: dict[str, Any], memory: dict[str, Any],
                 train: bool = False) -> dict[str, jax.Array]:
        """`decoded["hs"]` [L, B, Q, D] ->

        - `pred_logits` float32 [L, B, Q, C + 1] (softmax; index C = no object),
        - `pred_masks` float32 [L, B, Q, h, w]: mask logits, einsum("lbqe,bhwe->lbqhw") of the
          mask embeddings [L, B, Q, E] and `mask_features` [B, h, w, E] (stride 4, padded canvas),
        - `pred_boxes` float32 [L, B, Q, 4] normalised cxcywh (relative to each real image):
          the box of the mask's cells with probability > 0.5 (logit > 0) inside the image
          (`ops.mask_ops.masks_to_boxes`, stop-gradient; an empty mask gives (0, 0, 0, 0)).
        """
        if "mask_features" not in memory:
            raise ValueError("model.heads.name='maskformer' reads the neck's mask_features: "
                             "use a pixel-decoder neck (model.neck.name='maskformer_fpn')")
        f32 = jnp.float32
        hs = decoded["hs"].astype(f32)
        pixels = memory["mask_features"].astype(f32)
        d, c1 = self.hidden_dim, self.num_classes + 1
        logits = torch_dense(c1, d, "class_embed", f32)(hs)
        embed = MLP(d, pixels.shape[-1], self.mask_layers, d, f32, name="mask_embed")(hs)
        masks = jnp.einsum("lbqe,bhwe->lbqhw", embed, pixels)
        features = memory.get("features") or {}
        if "input" in features:
            size = real_image_size(features["input"].mask)  # [B, 2] (h, w) pixels
        else:  # called without the detector: the whole canvas is real
            h, w = pixels.shape[1:3]
            size = jnp.broadcast_to(jnp.asarray([h, w], f32) * MASK_STRIDE, (pixels.shape[0], 2))
        boxes = masks_to_boxes(jax.lax.stop_gradient(masks) > 0, size[None, :, None, :],
                               stride=MASK_STRIDE)
        return {"pred_logits": logits, "pred_masks": masks,
                "pred_boxes": jax.lax.stop_gradient(boxes)}
