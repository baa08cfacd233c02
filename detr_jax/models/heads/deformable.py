"""Deformable DETR's heads: sigmoid class logits and boxes refined from each layer's references.

Each decoder layer's box is sigmoid(bbox_embed(hs) + inverse_sigmoid(reference)) on all four
coordinates (4-D references) or on the centre (2-D); see transformers/deformable.py. Without
refinement one class head and one box head serve every layer (the original shares one module);
with `box_refine` each layer has its own; `two_stage` adds one more pair for the encoder
proposals. Initialisation as the original: class bias at the prior `prior_prob` (0.01), the box
head's last layer zero with bias (0, 0, -2, -2) on the heads whose layer starts from 2-D points
(the first head only with refinement), 0 where the layer starts from boxes (every head two-stage,
and DAB-DETR's anchor boxes: `reference_dim` 4), so a zero delta keeps the reference box.

Params (in the detector's scope, the original's names): `class_embed_{i}/{kernel,bias}`,
`bbox_embed_{i}/layers_{0,1,2}/{kernel,bias}`, i = 0..k-1 (k = 1 shared, else L (+1); DINO's
`share_layers`: 1 for the decoder + 1 for the proposals).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.torch_init import torch_dense, torch_kernel_init
from detr_jax.models.transformers.deformable import refine_boxes


class BoxMLP(nn.Module):
    """3-layer box MLP (D -> D -> D -> 4, ReLU) with a constant-initialised last layer."""

    hidden_dim: int
    size_bias: float = -2.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.hidden_dim
        for i in range(2):
            x = nn.relu(torch_dense(d, d, f"layers_{i}", jnp.float32)(x))
        bias = jnp.asarray([0.0, 0.0, self.size_bias, self.size_bias], jnp.float32)
        return nn.Dense(4, kernel_init=nn.initializers.zeros,
                        bias_init=lambda *_: bias, dtype=jnp.float32, name="layers_2")(x)


class DeformableHeads(nn.Module):
    """Sigmoid class logits [.., C] (no no-object column) and refined boxes for every layer.

    Attributes:
      num_classes: C (set by the builder); hidden_dim: D (set by the builder).
      num_layers, box_refine, two_stage, reference_dim: set by the builder from the
        transformer (`head_layout()`), so the heads match the decoder; `reference_dim` is the
        size of the decoder's first references (2: points, 4: boxes, as DAB-DETR's anchors).
      prior_prob: the class bias's prior probability (focal loss init).
      share_layers: with `box_refine`, one class and box head for all decoder layers (and one
        more pair for the proposals), as DINO (set by the builder from its transformer).
    """

    class_activation: ClassVar[str] = "sigmoid"

    num_classes: int = 91
    hidden_dim: int = 256
    num_layers: int = 6
    box_refine: bool = False
    two_stage: bool = False
    reference_dim: int = 2
    prior_prob: float = 0.01
    share_layers: bool = False

    def setup(self) -> None:
        per_layer = 1 if self.share_layers else self.num_layers
        count = per_layer + int(self.two_stage) if self.box_refine else 1
        bias = -math.log((1 - self.prior_prob) / self.prior_prob)
        d = self.hidden_dim
        self.class_embed = [
            nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                     bias_init=nn.initializers.constant(bias), dtype=jnp.float32,
                     name=f"class_embed_{i}")
            for i in range(count)
        ]
        points = self.reference_dim == 2 and not self.two_stage  # layer 0 starts from points
        size_bias = [-2.0 if points and not (self.box_refine and i > 0) else 0.0
                     for i in range(count)]
        self.bbox_embed = [BoxMLP(d, size_bias[i], name=f"bbox_embed_{i}") for i in range(count)]

    def _head(self, layer: int) -> int:
        """The head index of decoder layer `layer` (`num_layers`: the encoder proposals')."""
        if not self.box_refine:
            return 0
        if self.share_layers:
            return int(layer >= self.num_layers)
        return layer

    def box_delta(self, layer: int, hs: jax.Array) -> jax.Array:
        """Layer `layer`'s box head on hs [B, Q, D] -> [B, Q, 4] (before the references)."""
        return self.bbox_embed[self._head(layer)](hs.astype(jnp.float32))

    def encoder_head(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The proposal heads (the last pair; the shared one without refinement) on encoder
        features x [B, N, D] -> (class logits [B, N, C], box deltas [B, N, 4])."""
        i = self._head(self.num_layers)
        x = x.astype(jnp.float32)
        return self.class_embed[i](x), self.bbox_embed[i](x)

    def __call__(self, decoded: dict[str, Any], memory: dict[str, Any],
                 train: bool = False) -> dict[str, Any]:
        """`hs` [L, B, Q, D] and `references` (L + 1 arrays [B, Q, 2 | 4]) -> `pred_logits`
        float32 [L, B, Q, C] (sigmoid logits), `pred_boxes` float32 [L, B, Q, 4] normalised
        cxcywh; `enc_outputs` passed through (two-stage)."""
        hs, refs = decoded["hs"], decoded["references"]
        logits, boxes = [], []
        for layer in range(hs.shape[0]):
            h = hs[layer].astype(jnp.float32)
            logits.append(self.class_embed[self._head(layer)](h))
            boxes.append(refine_boxes(self.box_delta(layer, h), refs[layer]))
        outputs = {"pred_logits": jnp.stack(logits), "pred_boxes": jnp.stack(boxes)}
        if "enc_outputs" in decoded:
            outputs["enc_outputs"] = decoded["enc_outputs"]
        return outputs
