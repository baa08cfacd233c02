"""Necks by name: `NECKS[config.model.neck.name]`: backbone levels -> transformer tokens.

Multi-scale necks (Deformable DETR, pixel decoders) register here too.
"""

from __future__ import annotations

from detr_jax.models.necks.fpn_pixel_decoder import MaskFormerFPNNeck
from detr_jax.models.necks.multi_scale import MultiScaleNeck
from detr_jax.models.necks.pixel_decoder import PixelDecoderNeck
from detr_jax.models.necks.single_level import SingleLevelNeck
from detr_jax.models.registry import Registry

NECKS = Registry("neck")
NECKS.register("single_level", SingleLevelNeck)
NECKS.register("multi_scale", MultiScaleNeck)
NECKS.register("mask2former_pixel_decoder", PixelDecoderNeck)
NECKS.register("maskformer_fpn", MaskFormerFPNNeck)

__all__ = ["NECKS", "MaskFormerFPNNeck", "MultiScaleNeck", "PixelDecoderNeck", "SingleLevelNeck"]
