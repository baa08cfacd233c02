"""DETR's neck: one backbone level through a 1x1 input projection, flattened to tokens.

Params (in the detector's scope, as in the original's state_dict): `input_proj/{kernel,bias}`
and, with the learned position embedding, `position_embedding/{row,col}_embed`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from detr_jax.models.backbones.base import Feature
from detr_jax.models.position_encoding import (
    POSITION_EMBEDDING_CHOICES,
    LearnedPositionEmbedding,
    sine_position_embedding,
)
from detr_jax.models.torch_init import torch_bias_init, torch_kernel_init


class SingleLevelNeck(nn.Module):
    """Projects backbone level `level` to `hidden_dim` channels (1x1 conv) and embeds positions.

    Attributes:
      hidden_dim: the transformer width D (set by the builder from `model.hidden_dim`).
      level: the backbone level read ("C3", "C4" or "C5").
      position_embedding: "sine" (DETR's PositionEmbeddingSine, normalised) or "learned".
      temperature: the sine embedding's temperature (DETR 10000, DAB-DETR 20).
      dtype: compute dtype of the projection (set by the builder from `model.dtype`).
    """

    hidden_dim: int = 256
    level: str = "C5"
    position_embedding: str = "sine"
    temperature: float = 10000.0
    dtype: Any = None

    @property
    def input_levels(self) -> tuple[str, ...]:
        """The backbone levels this neck reads (the builder asks the backbone for them)."""
        return (self.level,)

    @nn.compact
    def __call__(self, feats: dict[str, Feature], train: bool = False) -> dict[str, Any]:
        """{level: Feature} -> the transformer's input (docs/interfaces.md, "Neck output"):

        `tokens` [B, N, D] (N = h * w, row-major), `pos` [B, N, D] (the tokens' dtype), `mask`
        bool [B, N] (True on real positions), `spatial_shapes` ((h, w),) and `source` (the
        Feature read, for heads that look at the backbone map).
        """
        x, mask, _ = source = feats[self.level]
        b, h, w, c = x.shape
        if self.position_embedding == "sine":
            pos = sine_position_embedding(mask, self.hidden_dim, self.temperature)
        elif self.position_embedding == "learned":
            pos = LearnedPositionEmbedding(self.hidden_dim, name="position_embedding")(mask)
        else:
            raise ValueError(
                f"model.neck.position_embedding={self.position_embedding!r}; "
                f"choose one of {POSITION_EMBEDDING_CHOICES}"
            )
        src = nn.Conv(
            self.hidden_dim,
            (1, 1),
            kernel_init=torch_kernel_init,
            bias_init=torch_bias_init(c),
            dtype=self.dtype,
            name="input_proj",
        )(x)
        tokens = src.reshape(b, h * w, self.hidden_dim)
        return {
            "tokens": tokens,
            "pos": pos.reshape(b, h * w, self.hidden_dim).astype(tokens.dtype),
            "mask": mask.reshape(b, h * w),
            "spatial_shapes": ((h, w),),
            "source": source,
        }

