"""The `boxes` loss term: L1 and 1 - GIoU over matched (query, ground truth) pairs.

Boxes are normalised cxcywh (relative to the unpadded image); GIoU is computed on xyxy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.losses.targets import Targets
from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, elementwise_giou


def boxes_term(outputs: dict, batch: dict, t: Targets) -> dict[str, jax.Array]:
    """`loss_bbox` [L] (L1 summed over the 4 coordinates) and `loss_giou` [L], each summed over
    matched pairs and divided by `t.num_boxes` (the global box count, see criterion.py)."""
    boxes = outputs["pred_boxes"]
    num_q = boxes.shape[2]
    match = t.match  # [L, B, G]
    pair_ok = t.gt_valid[None] & (match >= 0) & (match < num_q)
    q_idx = jnp.clip(match, 0, num_q - 1)[..., None]
    src = jnp.take_along_axis(boxes, jnp.broadcast_to(q_idx, match.shape + (4,)), axis=2)
    tgt = jnp.broadcast_to(t.gt_boxes, src.shape)
    l1 = jnp.where(pair_ok, jnp.sum(jnp.abs(src - tgt), axis=-1), 0.0)
    giou = elementwise_giou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
    one_minus_giou = jnp.where(pair_ok, 1.0 - giou, 0.0)
    return {
        "loss_bbox": jnp.sum(l1, axis=(1, 2)) / t.num_boxes,
        "loss_giou": jnp.sum(one_minus_giou, axis=(1, 2)) / t.num_boxes,
    }
