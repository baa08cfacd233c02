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
better). Mask terms (``mask``, ``dice``) also declare the keyword-only inputs of
:data:`MASK_INPUTS` (``pred_masks`` [B, Q, h, w] mask logits at stride 4 of the padded canvas,
``gt_masks`` [B, G, H, W] 0/1 masks on that canvas, ``rng`` a PRNG key), which
:func:`~detr_jax.matching.costs.matching_cost` passes to the terms that declare them; they are
inputs, not settings. Terms know nothing about padding:
:func:`detr_jax.matching.costs.matching_cost` weights and sums them, cuts gradients and
applies ``gt_valid`` / ``query_valid``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, pairwise_giou
from detr_jax.ops.point_sample import point_sample, stride_scale

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


def matching_points(rng: jax.Array, batch_size: int, num_points: int) -> jax.Array:
    """float32 [B, P, 2]: the uniform (x, y) points in [0, 1) of the canvas shared by all
    queries and targets of each image (Mask2Former's matcher), from ``rng``."""
    if int(num_points) != num_points or num_points < 1:
        raise ValueError(f"matcher.costs mask/dice: num_points must be an integer >= 1, got "
                         f"{num_points!r}")
    return jax.random.uniform(rng, (batch_size, int(num_points), 2), jnp.float32)


def sampled_masks(pred_masks: jnp.ndarray, gt_masks: jnp.ndarray, rng: jax.Array,
                  num_points: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Predicted logits [B, Q, P] and ground truth [B, G, P] (float 0/1) at
    :func:`matching_points`: the canvas points read the stride-4 logits at the same canvas
    position (``ops.point_sample.stride_scale``; the same normalised point when the canvas is a
    multiple of 4, as Mask2Former's)."""
    pred = jnp.asarray(pred_masks, jnp.float32)
    gt = jnp.asarray(gt_masks)
    if pred.ndim != 4 or gt.ndim != 4 or gt.shape[0] != pred.shape[0]:
        raise ValueError(f"mask costs expect pred_masks [B, Q, h, w] and gt_masks [B, G, H, W], "
                         f"got {pred.shape} and {gt.shape}")
    points = matching_points(rng, pred.shape[0], num_points)
    scale = stride_scale(pred.shape[-2:], gt.shape[-2:])
    return point_sample(pred, points * scale), point_sample(gt, points)


def _pairwise_point_mean(pos: jnp.ndarray, neg: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """Per-point losses against 1 (`pos`) and 0 (`neg`) [B, Q, P], targets `t` [B, G, P] ->
    their mean over the points for every (query, target) pair [B, Q, G]."""
    highest = jax.lax.Precision.HIGHEST
    n = pos.shape[-1]
    return (jnp.einsum("bqp,bgp->bqg", pos / n, t, precision=highest)
            + jnp.einsum("bqp,bgp->bqg", neg / n, 1.0 - t, precision=highest))


def mask_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    *,
    pred_masks: jnp.ndarray,
    gt_masks: jnp.ndarray,
    rng: jax.Array,
    num_points: int = 12544,
) -> jnp.ndarray:
    """Mask2Former's mask term: sigmoid BCE of the query's logits against the target mask,
    averaged over ``num_points`` uniform points per image (:func:`sampled_masks`):
    ``(softplus(-x) @ t + softplus(x) @ (1 - t)) / P`` -> [B, Q, G] float32."""
    del pred_logits, pred_boxes, gt_labels, gt_boxes
    x, t = sampled_masks(pred_masks, gt_masks, rng, num_points)
    return _pairwise_point_mean(jax.nn.softplus(-x), jax.nn.softplus(x), t)  # BCE vs 1 / 0


def mask_focal_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    *,
    pred_masks: jnp.ndarray,
    gt_masks: jnp.ndarray,
    rng: jax.Array,
    num_points: int = 12544,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> jnp.ndarray:
    """MaskFormer's mask term: the sigmoid focal loss of the query's logits against the target
    mask, averaged over the same uniform points as ``mask`` / ``dice`` (MaskFormer averages over
    all pixels of the stride-4 mask; uniform points estimate that mean):
    ``(alpha (1-p)^gamma softplus(-x) @ t + (1-alpha) p^gamma softplus(x) @ (1 - t)) / P``
    -> [B, Q, G] float32."""
    del pred_logits, pred_boxes, gt_labels, gt_boxes
    x, t = sampled_masks(pred_masks, gt_masks, rng, num_points)
    p = jax.nn.sigmoid(x)
    return _pairwise_point_mean(alpha * (1.0 - p) ** gamma * jax.nn.softplus(-x),
                                (1.0 - alpha) * p ** gamma * jax.nn.softplus(x), t)


def dice_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    *,
    pred_masks: jnp.ndarray,
    gt_masks: jnp.ndarray,
    rng: jax.Array,
    num_points: int = 12544,
) -> jnp.ndarray:
    """Mask2Former's dice term on the same points as ``mask`` (same ``rng`` and ``num_points``):
    ``1 - (2 p @ t + 1) / (sum p + sum t + 1)``, p = sigmoid(logits) -> [B, Q, G] float32."""
    del pred_logits, pred_boxes, gt_labels, gt_boxes
    x, t = sampled_masks(pred_masks, gt_masks, rng, num_points)
    p = jax.nn.sigmoid(x)
    numerator = 2.0 * jnp.einsum("bqp,bgp->bqg", p, t, precision=jax.lax.Precision.HIGHEST)
    denominator = jnp.sum(p, axis=-1)[:, :, None] + jnp.sum(t, axis=-1)[:, None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


COST_TERMS: dict[str, CostTerm] = {
    "class": class_cost,
    "focal_class": focal_class_cost,
    "bbox": bbox_cost,
    "giou": giou_cost,
    "mask": mask_cost,
    "mask_focal": mask_focal_cost,
    "dice": dice_cost,
}

# Keyword-only inputs (not settings) of the mask terms, passed by ``matching_cost``.
MASK_INPUTS = ("pred_masks", "gt_masks", "rng")


def _keyword_only(name: str) -> tuple[str, ...]:
    if name not in COST_TERMS:
        raise ValueError(f"unknown matching cost term {name!r}; choose one of {sorted(COST_TERMS)}")
    params = inspect.signature(COST_TERMS[name]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def cost_term_inputs(name: str) -> tuple[str, ...]:
    """The :data:`MASK_INPUTS` the cost term ``name`` reads (empty for the box/class terms)."""
    return tuple(k for k in _keyword_only(name) if k in MASK_INPUTS)


def cost_term_settings(name: str) -> tuple[str, ...]:
    """Keyword settings accepted by the cost term ``name`` (besides ``weight``).

    Raises:
      ValueError: if ``name`` is not in :data:`COST_TERMS` (the message lists the choices).
    """
    return tuple(k for k in _keyword_only(name) if k not in MASK_INPUTS)


__all__ = [
    "COST_TERMS",
    "MASK_INPUTS",
    "CostTerm",
    "bbox_cost",
    "class_cost",
    "cost_term_inputs",
    "cost_term_settings",
    "dice_cost",
    "focal_class_cost",
    "giou_cost",
    "mask_cost",
    "mask_focal_cost",
    "matching_points",
    "sampled_masks",
]
