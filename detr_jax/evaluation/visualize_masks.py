"""Pictures of masks: panoptic id maps and instance masks blended over their image (numpy).

Colours follow the class (`visualize.class_colour`); each thing instance gets its own shade of
its class colour so that touching instances stay apart; VOID (id 0) is left as the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from detr_jax.evaluation.visualize import class_colour


def _shade(colour: tuple[int, int, int], k: int) -> np.ndarray:
    """The class colour, darkened or lightened by instance index k (k = 0: the colour)."""
    factor = (1.0, 0.7, 1.3, 0.55, 1.15, 0.85)[k % 6]
    return np.clip(np.asarray(colour, np.float32) * factor, 0, 255)


def panoptic_colours(ids: np.ndarray, segments: Sequence[Mapping]) -> np.ndarray:
    """An id map int [H, W] (0 = VOID) and its segments ({`id`, `category_id` contiguous label,
    optional `isthing`}) -> uint8 [H, W, 3]: black on VOID and on ids without a segment."""
    out = np.zeros(ids.shape + (3,), np.float32)
    per_class: dict[int, int] = {}
    for seg in segments:
        label = int(seg["category_id"])
        k = per_class.get(label, 0)
        per_class[label] = k + 1
        out[ids == int(seg["id"])] = _shade(class_colour(label), k)
    return out.astype(np.uint8)


def blend_panoptic(image: np.ndarray, ids: np.ndarray, segments: Sequence[Mapping],
                   alpha: float = 0.55) -> np.ndarray:
    """uint8 image [H, W, 3] with the panoptic colours over it (`alpha` opacity; VOID and
    unknown ids show the image) and a dark line on segment borders. `ids` must have the
    image's size."""
    if ids.shape != image.shape[:2]:
        raise ValueError(f"id map {ids.shape} does not match the image {image.shape[:2]}")
    known = np.isin(ids, [int(s["id"]) for s in segments]) & (ids != 0)
    colours = panoptic_colours(ids, segments).astype(np.float32)
    img = image.astype(np.float32)
    out = np.where(known[..., None], (1 - alpha) * img + alpha * colours, img)
    border = np.zeros(ids.shape, bool)
    border[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    border[1:, :] |= ids[1:, :] != ids[:-1, :]
    out[border] *= 0.3
    return np.clip(out, 0, 255).astype(np.uint8)


def blend_instances(image: np.ndarray, masks: np.ndarray, labels: Sequence[int],
                    alpha: float = 0.5) -> np.ndarray:
    """uint8 image [H, W, 3] with bool instance masks [K, H, W] of contiguous `labels` [K]
    blended over it, later masks on top."""
    out = image.astype(np.float32)
    per_class: dict[int, int] = {}
    for mask, label in zip(np.asarray(masks, bool), labels, strict=True):
        k = per_class.get(int(label), 0)
        per_class[int(label)] = k + 1
        out[mask] = (1 - alpha) * out[mask] + alpha * _shade(class_colour(int(label)), k)
    return np.clip(out, 0, 255).astype(np.uint8)
