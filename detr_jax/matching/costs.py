"""Matching cost: a weighted sum of registered cost terms, computed per image.

:func:`matching_cost` sums the terms of :data:`~detr_jax.matching.cost_terms.COST_TERMS`
named in ``weights``; :func:`detr_cost` is DETR's cost (class 1, L1 box 5, GIoU 2).
The cost is what the bipartite matcher minimises; it never carries gradients.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.matching._common import sanitize
from detr_jax.matching.cost_terms import COST_TERMS, cost_term_inputs, cost_term_settings

# DETR's matcher weights (set_cost_class, set_cost_bbox, set_cost_giou).
DETR_COST_WEIGHTS: dict[str, float] = {"class": 1.0, "bbox": 5.0, "giou": 2.0}


def _is_mapping(value: Any) -> bool:
    """Mappings, and mapping-like config objects (``ml_collections.ConfigDict``)."""
    return isinstance(value, Mapping) or (hasattr(value, "items") and hasattr(value, "keys"))


def _is_weight(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Real) or (
        isinstance(value, (np.ndarray, jax.Array)) and value.shape == ()
    )


def check_cost_weights(weights: Any) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Validate ``weights`` and return ``{term: (weight, term_kwargs)}`` in the given order.

    Args:
      weights: mapping (or ``ConfigDict``) from term name to a weight, or to a mapping
        ``{"weight": w, **term_kwargs}``, e.g. ``{"class": 1.0, "bbox": 5.0}`` or
        ``{"focal_class": {"weight": 2.0, "alpha": 0.25}, "bbox": 5.0, "giou": 2.0}``.

    Raises:
      ValueError: (one line) for an empty mapping, an unknown term (naming it and the
        choices), a missing or non-numeric weight, or an unknown term setting (naming
        it and the accepted ones).
    """
    if not _is_mapping(weights) or len(weights) == 0:
        raise ValueError(f"matching cost weights must be a non-empty mapping, got {weights!r}")
    parsed: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name, spec in weights.items():
        if name not in COST_TERMS:
            raise ValueError(
                f"unknown matching cost term {name!r}; choose one of {sorted(COST_TERMS)}"
            )
        kwargs = dict(spec.items()) if _is_mapping(spec) else {"weight": spec}
        if "weight" not in kwargs:
            raise ValueError(f"matching cost term {name!r}: the mapping needs a 'weight' entry")
        weight = kwargs.pop("weight")
        if not _is_weight(weight):
            raise ValueError(
                f"matching cost term {name!r}: weight must be a number, got {weight!r}"
            )
        accepted = cost_term_settings(name)
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise ValueError(
                f"matching cost term {name!r}: unknown setting(s) {unknown}; "
                f"accepted: {['weight', *accepted]}"
            )
        parsed[name] = (weight, kwargs)
    return parsed


def matching_cost(
    pred_logits: jnp.ndarray,
    pred_boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_valid: jnp.ndarray,
    weights: Mapping[str, float | Mapping[str, Any]],
    query_valid: jnp.ndarray | None = None,
    *,
    pred_masks: jnp.ndarray | None = None,
    gt_masks: jnp.ndarray | None = None,
    rng: jax.Array | None = None,
) -> jnp.ndarray:
    """Weighted sum of cost terms between every query and every ground-truth slot.

    ``cost = sum_t weight_t * term_t(...)``, summed left to right in the order of
    ``weights`` (every listed term is computed, even at weight 0). See
    :mod:`detr_jax.matching.cost_terms` for the terms.

    Args:
      pred_logits: [B, Q, K] class logits: ``K = C + 1`` (no-object last) for ``"class"``,
        ``K = C`` for ``"focal_class"``.
      pred_boxes: [B, Q, 4] predicted boxes, normalised ``cxcywh``.
      gt_labels: [B, G] int ground-truth labels in ``0..C-1`` (anything at invalid slots;
        clipped to range before indexing).
      gt_boxes: [B, G, 4] ground-truth boxes, normalised ``cxcywh``.
      gt_valid: [B, G] bool, False for padding slots.
      weights: term name -> weight, or -> ``{"weight": w, **term_kwargs}``
        (:func:`check_cost_weights`; unknown names raise ``ValueError``).
      query_valid: optional [B, Q] bool; rows of False queries are treated like +inf, so a
        solver uses them only for slots that no valid query can take.
      pred_masks: [B, Q, h, w] mask logits at stride 4 of the padded canvas, for the mask
        terms (``mask``, ``dice``; ``cost_term_inputs``); not used otherwise.
      gt_masks: [B, G, H, W] 0/1 ground-truth masks on the padded canvas (uint8 or float).
      rng: PRNG key of the mask terms' random points (``jax.random.PRNGKey(0)`` when None);
        terms given the same key and ``num_points`` sample the same points.

    Returns:
      [B, Q, G] float32 cost, without gradient. Columns of invalid ground-truth
      slots are 0 (matchers must ignore them through ``gt_valid``). Non-finite entries
      (and excluded queries) get finite penalties relative to each image's cost span, the
      one rule all matchers share (``detr_jax.matching._common.sanitize``), so that float32
      in-jit solvers keep their precision.
    """
    parsed = check_cost_weights(weights)
    logits = jax.lax.stop_gradient(jnp.asarray(pred_logits, jnp.float32))
    boxes = jax.lax.stop_gradient(jnp.asarray(pred_boxes, jnp.float32))
    tgt_boxes = jax.lax.stop_gradient(jnp.asarray(gt_boxes, jnp.float32))
    mask_inputs = {"pred_masks": pred_masks, "gt_masks": gt_masks, "rng": rng}
    if pred_masks is not None:
        mask_inputs["pred_masks"] = jax.lax.stop_gradient(jnp.asarray(pred_masks, jnp.float32))
    if rng is None and any("rng" in cost_term_inputs(name) for name in parsed):
        mask_inputs["rng"] = jax.random.PRNGKey(0)
    terms = []
    for name, (weight, kwargs) in parsed.items():
        inputs = {k: mask_inputs[k] for k in cost_term_inputs(name)}
        missing = [k for k, v in inputs.items() if v is None]
        if missing:
            raise ValueError(f"matching cost term {name!r} needs {missing} (mask logits "
                             "[B, Q, h, w] and ground-truth masks [B, G, H, W])")
        terms.append((weight, COST_TERMS[name](logits, boxes, gt_labels, tgt_boxes,
                                               **kwargs, **inputs)))
    # All terms first, then w0*t0 + w1*t1 + ...: the same operations, in the same order,
    # as the former hand-written ``c * class + b * bbox + g * giou`` (bitwise equal).
    cost = terms[0][0] * terms[0][1]
    for weight, term in terms[1:]:
        cost = cost + weight * term
    cost = cost.astype(jnp.float32)
    if query_valid is not None:
        cost = jnp.where(jnp.asarray(query_valid, bool)[:, :, None], cost, jnp.inf)
    return jax.lax.stop_gradient(sanitize(cost, jnp.asarray(gt_valid, bool)))


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
    """DETR matching cost: :func:`matching_cost` with the terms class, bbox, giou.

    ``cost = cost_class * (-p[gt class]) + cost_bbox * L1 + cost_giou * (-GIoU)``
    where ``p = softmax(pred_logits)`` over the C+1 classes, the L1 distance is
    summed over the 4 ``cxcywh`` coordinates and GIoU is computed on ``xyxy``.

    Args:
      pred_logits: [B, Q, C+1] class logits (index C = no object).
      pred_boxes: [B, Q, 4] predicted boxes, normalised ``cxcywh``.
      gt_labels: [B, G] int32 labels in ``0..C-1`` (clipped to range before indexing).
      gt_boxes: [B, G, 4] ground-truth boxes, normalised ``cxcywh``.
      gt_valid: [B, G] bool, False for padding slots.
      cost_class, cost_bbox, cost_giou: weights of the three terms.
      query_valid: optional [B, Q] bool (see :func:`matching_cost`).

    Returns:
      [B, Q, G] float32 cost without gradient, as :func:`matching_cost`.
    """
    weights = {"class": cost_class, "bbox": cost_bbox, "giou": cost_giou}
    return matching_cost(
        pred_logits, pred_boxes, gt_labels, gt_boxes, gt_valid, weights, query_valid
    )


__all__ = ["COST_TERMS", "DETR_COST_WEIGHTS", "check_cost_weights", "detr_cost", "matching_cost"]
