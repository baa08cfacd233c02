"""Transformers by name: `TRANSFORMERS[config.model.transformer.name]`: neck tokens and a query
set -> decoder outputs per layer. The deformable and DAB-DETR encoder-decoders register here too."""

from __future__ import annotations

from detr_jax.models.registry import Registry
from detr_jax.models.transformers.dab import DabTransformer
from detr_jax.models.transformers.deformable import DeformableTransformer
from detr_jax.models.transformers.detr import DetrTransformer
from detr_jax.models.transformers.dino import DinoTransformer
from detr_jax.models.transformers.layers import ATTENTION_CHOICES
from detr_jax.models.transformers.mask2former import Mask2FormerTransformer

TRANSFORMERS = Registry("transformer")
TRANSFORMERS.register("detr", DetrTransformer)
TRANSFORMERS.register("deformable", DeformableTransformer)
TRANSFORMERS.register("dino", DinoTransformer)
TRANSFORMERS.register("dab", DabTransformer)
TRANSFORMERS.register("mask2former", Mask2FormerTransformer)

__all__ = ["ATTENTION_CHOICES", "TRANSFORMERS", "DabTransformer", "DeformableTransformer",
           "DetrTransformer", "DinoTransformer", "Mask2FormerTransformer"]
