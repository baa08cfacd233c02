"""COCO panoptic PNG encoding: a segment id per pixel stored as RGB, id = R + 256 G + 256^2 B.

The format of COCO's panoptic annotations (and of panopticapi's `rgb2id` / `id2rgb`); id 0 is
VOID (unlabelled pixels).
"""

from __future__ import annotations

import numpy as np


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] RGB -> int32 [...] segment ids."""
    rgb = np.asarray(rgb).astype(np.int32)
    if rgb.shape[-1] != 3:
        raise ValueError(f"expected [..., 3] RGB, got shape {rgb.shape}")
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """int [...] segment ids in [0, 256^3) -> uint8 [..., 3] RGB."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256 ** 3):
        raise ValueError(f"segment ids must lie in [0, 256^3), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
