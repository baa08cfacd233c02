"""DETR's prediction heads: a linear class head and a 3-layer box MLP on every decoder layer,
and an optional dense class head on the backbone map (detr_jax/losses/dense.py).

Params (in the detector's scope, as in the original's state_dict): `class_embed`,
`bbox_embed/layers_{0,1,2}`, and with `dense_aux` `dense_class_head`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.torch_init import MLP, torch_dense


class ClassBoxHeads(nn.Module):
    """Class logits (C + 1, the last "no object") and sigmoid boxes for each decoder output.

    The heads run in float32 whatever the compute dtype (a tiny share of the FLOPs, and box
    regression and the matching costs want the precision).

    Attributes:
      num_classes: C (set by the builder from `config.num_classes`).
      hidden_dim: D (set by the builder).
      dense_aux: also a 1x1 class head on the neck's source feature map.
    """

    num_classes: int = 91
    hidden_dim: int = 256
    dense_aux: bool = False

    @nn.compact
    def __call__(self, decoded: dict[str, Any], memory: dict[str, Any],
                 train: bool = False) -> dict[str, jax.Array]:
        """`decoded["hs"]` [L, B, Q, D] -> `pred_logits` float32 [L, B, Q, C + 1] and `pred_boxes`
        float32 [L, B, Q, 4] (normalised cxcywh); with `dense_aux` also `dense_logits`
        [B, h, w, C + 1] and `dense_mask` bool [B, h, w] from `memory["source"]`."""
        f32 = jnp.float32
        hs = decoded["hs"].astype(f32)
        d, c1 = self.hidden_dim, self.num_classes + 1
        logits = torch_dense(c1, d, "class_embed", f32)(hs)
        boxes = MLP(d, 4, 3, d, f32, name="bbox_embed")(hs)
        outputs = {"pred_logits": logits, "pred_boxes": jax.nn.sigmoid(boxes)}
        if self.dense_aux:
            x, mask, _ = memory["source"]
            dense = torch_dense(c1, x.shape[-1], "dense_class_head", f32)(x.astype(f32))
            outputs["dense_logits"] = dense.astype(f32)
            outputs["dense_mask"] = mask
        return outputs
