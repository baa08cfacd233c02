"""PyTorch DETR / ResNet weights -> detr_jax params checkpoints (`python -m detr_jax.convert`).

Everything importable from here is numpy-only; `torch_io` (file reading) imports torch lazily.
"""

from detr_jax.convert.checkpoint import SOURCES, convert_state_dict, write_checkpoint
from detr_jax.convert.detr import facebook_to_params, hf_to_facebook_state_dict, hf_to_params
from detr_jax.models.backbones.resnet_keys import ConversionError, convert_resnet_backbone

__all__ = [
    "SOURCES",
    "ConversionError",
    "convert_resnet_backbone",
    "convert_state_dict",
    "facebook_to_params",
    "hf_to_facebook_state_dict",
    "hf_to_params",
    "write_checkpoint",
]
