"""The terms of the matching cost, one function per term, registered in :data:`COST_TERMS`.

Every term has the signature ``fn(pred_logits, pred_boxes, gt_labels, gt_boxes, **kw)``:

* ``pred_logits``: [B, Q, K] class logits (``K = C + 1`` with the no-object logit last for
  ``"class"``; ``K = C``, no no-object column, for ``"focal_class"``);
* ``pred_boxes``: [B, Q, 4] predicted boxes, normalised ``cxcywh``;
* ``gt_labels``: [B, G] int ground-truth labels in ``0..C-1`` (out-of-range values, e.g.
  at padding slots, are clipped before indexing);
* ``gt_boxes``: [B, G, 4] ground-truth boxes, normalised ``cxcywh``;
* ``**kw``: the term's keyword-only settings (:func:`cost_term_settings`);

and returns the [B, Q, G] float32 cost of matching query ``q`` to slot ``g`` (lower is
better). Terms know nothing about padding: :func:`detr_jax.matching.costs.matching_cost`
weights and sums them, cuts gradients and applies ``gt_valid`` / ``query_valid``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, pairwise_giou

CostTerm = Callable[..., jnp.ndarray]


def _clip_labels(gt_labels: jnp.ndarray, num_logits: int) -> jnp.ndarray:
    """[B, G] labels as int32, clipped into ``0..num_logits-1``."""
    return jnp.clip(jnp.asarray(gt_labels, jnp.int32), 0, num_logits - 1)


def _gather_classes(values: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """``values`` [B, Q, K] at each slot's (clipped) label ``labels`` [B, G] -> [B, Q, G]."""
    idx = jnp.broadcast_to(labels[:, None, :], values.shape[:-1] + labels.shape[-1:])
    return jnp.take_along_axis(values, idx, axis=-1)


def class_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
) -> jnp.ndarray:
    """DETR's class term ``-softmax(pred_logits)[gt class]``.

    ``pred_logits`` is [B, Q, C+1] (softmax over all C+1 logits, no-object included);
    ``pred_boxes`` and ``gt_boxes`` are unused. Returns [B, Q, G] float32 in ``[-1, 0]``.
    """
    del pred_boxes, gt_boxes
    logits = jnp.asarray(pred_logits, jnp.float32)
    labels = _clip_labels(gt_labels, logits.shape[-1])
    prob = jax.nn.softmax(logits, axis=-1)  # [B, Q, C+1]
    return -_gather_classes(prob, labels)


def focal_class_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eps: float = 1e-8,
) -> jnp.ndarray:
    """Focal class term of Deformable DETR / DINO on sigmoid probabilities.

    With ``p = sigmoid(pred_logits)[gt class]``:
    ``pos = alpha * (1 - p)^gamma * -log(p + eps)``,
    ``neg = (1 - alpha) * p^gamma * -log(1 - p + eps)``, cost ``= pos - neg``.

    ``pred_logits`` is [B, Q, C] (one sigmoid per class, no no-object column);
    ``pred_boxes`` and ``gt_boxes`` are unused. Returns [B, Q, G] float32.
    """
    del pred_boxes, gt_boxes
    logits = jnp.asarray(pred_logits, jnp.float32)
    labels = _clip_labels(gt_labels, logits.shape[-1])
    prob = jax.nn.sigmoid(logits)  # [B, Q, C]
    p = _gather_classes(prob, labels)  # [B, Q, G]; the rest is elementwise, so gather first
    neg = (1.0 - alpha) * (p**gamma) * (-jnp.log(1.0 - p + eps))
    pos = alpha * ((1.0 - p) ** gamma) * (-jnp.log(p + eps))
    return (pos - neg).astype(jnp.float32)


def bbox_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
) -> jnp.ndarray:
    """L1 distance summed over the 4 normalised ``cxcywh`` coordinates -> [B, Q, G] float32."""
    del pred_logits, gt_labels
    boxes = jnp.asarray(pred_boxes, jnp.float32)
    tgt = jnp.asarray(gt_boxes, jnp.float32)
    return jnp.sum(jnp.abs(boxes[:, :, None, :] - tgt[:, None, :, :]), axis=-1)


def giou_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
) -> jnp.ndarray:
    """``-GIoU`` of the boxes converted to ``xyxy`` -> [B, Q, G] float32 in ``[-1, 1]``."""
    del pred_logits, gt_labels
    boxes = jnp.asarray(pred_boxes, jnp.float32)
    tgt = jnp.asarray(gt_boxes, jnp.float32)
    return -pairwise_giou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt))


COST_TERMS: dict[str, CostTerm] = {
    "class": class_cost,
    "focal_class": focal_class_cost,
    "bbox": bbox_cost,
    "giou": giou_cost,
}


def cost_term_settings(name: str) -> tuple[str, ...]:
    """Keyword settings accepted by the cost term ``name`` (besides ``weight``).

    Raises:
      ValueError: if ``name`` is not in :data:`COST_TERMS` (the message lists the choices).
    """
    if name not in COST_TERMS:
        raise ValueError(f"unknown matching cost term {name!r}; choose one of {sorted(COST_TERMS)}")
    params = inspect.signature(COST_TERMS[name]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


__all__ = [
    "COST_TERMS",
    "CostTerm",
    "bbox_cost",
    "class_cost",
    "cost_term_settings",
    "focal_class_cost",
    "giou_cost",
]
