"""Matching cost of DETR (classification + L1 box + GIoU), computed per image.

The cost is what the bipartite matcher minimises; it never carries gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.matching._common import sanitize
from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, pairwise_giou


def detr_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_valid: jnp.ndarray,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    query_valid: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """DETR matching cost between every query and every ground-truth slot.

    ``cost = cost_class * (-p[gt class]) + cost_bbox * L1 + cost_giou * (-GIoU)``
    where ``p = softmax(pred_logits)`` over the C+1 classes, the L1 distance is
    summed over the 4 ``cxcywh`` coordinates and GIoU is computed on ``xyxy``.

    Args:
      pred_logits: [B, Q, C+1] class logits (index C = no object).
      pred_boxes: [B, Q, 4] predicted boxes, normalised ``cxcywh``.
      gt_labels: [B, G] int32 ground-truth labels in ``0..C-1`` (anything at
        invalid slots; clipped to range before indexing).
      gt_boxes: [B, G, 4] ground-truth boxes, normalised ``cxcywh``.
      gt_valid: [B, G] bool, False for padding slots.
      cost_class, cost_bbox, cost_giou: weights of the three terms.
      query_valid: optional [B, Q] bool; rows of False queries are treated like +inf, so a
        solver uses them only for slots that no valid query can take.

    Returns:
      [B, Q, G] float32 cost, without gradient. Columns of invalid ground-truth
      slots are 0 (matchers must ignore them through ``gt_valid``). Non-finite entries
      (and excluded queries) get finite penalties relative to each image's cost span, the
      one rule all matchers share (``detr_jax.matching._common.sanitize``), so that float32
      in-jit solvers keep their precision.
    """
    logits = jax.lax.stop_gradient(jnp.asarray(pred_logits, jnp.float32))
    boxes = jax.lax.stop_gradient(jnp.asarray(pred_boxes, jnp.float32))
    tgt_boxes = jax.lax.stop_gradient(jnp.asarray(gt_boxes, jnp.float32))
    num_logits = logits.shape[-1]
    labels = jnp.clip(jnp.asarray(gt_labels, jnp.int32), 0, num_logits - 1)

    prob = jax.nn.softmax(logits, axis=-1)  # [B, Q, C+1]
    idx = jnp.broadcast_to(labels[:, None, :], prob.shape[:-1] + labels.shape[-1:])
    class_term = -jnp.take_along_axis(prob, idx, axis=-1)  # [B, Q, G]

    bbox_term = jnp.sum(jnp.abs(boxes[:, :, None, :] - tgt_boxes[:, None, :, :]), axis=-1)
    giou_term = -pairwise_giou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))

    cost = cost_class * class_term + cost_bbox * bbox_term + cost_giou * giou_term
    cost = cost.astype(jnp.float32)
    if query_valid is not None:
        cost = jnp.where(jnp.asarray(query_valid, bool)[:, :, None], cost, jnp.inf)
    return jax.lax.stop_gradient(sanitize(cost, jnp.asarray(gt_valid, bool)))
