"""Heads by name: `HEADS[config.model.heads.name]`: decoder outputs -> predictions.

Iterative box refinement and mask heads register here too.
"""

from __future__ import annotations

from detr_jax.models.heads.box import ClassBoxHeads
from detr_jax.models.heads.deformable import DeformableHeads
from detr_jax.models.heads.detr_mask import DetrSegmHeads
from detr_jax.models.heads.mask2former import Mask2FormerHeads
from detr_jax.models.heads.maskformer import MaskFormerHeads
from detr_jax.models.registry import Registry

HEADS = Registry("heads")
HEADS.register("class_box", ClassBoxHeads)
HEADS.register("deformable", DeformableHeads)
HEADS.register("mask2former", Mask2FormerHeads)
HEADS.register("detr_segm", DetrSegmHeads)
HEADS.register("maskformer", MaskFormerHeads)

__all__ = ["HEADS", "ClassBoxHeads", "DeformableHeads", "DetrSegmHeads", "Mask2FormerHeads",
           "MaskFormerHeads"]
