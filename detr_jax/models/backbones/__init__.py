"""Backbones by name: `BACKBONES[config.model.backbone.name]` (see detr_jax/models/registry.py).

Adding one: its file in this folder, one `register` line here, its config and its test.
"""

from __future__ import annotations

import functools

from detr_jax.models.backbones.base import Feature, resize_mask_nearest
from detr_jax.models.backbones.resnet import RESNET_SPECS, ResNet
from detr_jax.models.registry import Registry

BACKBONES = Registry("backbone")
for _depth in RESNET_SPECS:
    BACKBONES.register(f"resnet{_depth}", functools.partial(ResNet, depth=_depth))

__all__ = ["BACKBONES", "Feature", "ResNet", "resize_mask_nearest"]
