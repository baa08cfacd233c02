"""DETR set criterion: Hungarian matching + weighted CE, L1 and GIoU box losses.

Shapes (see ``docs/interfaces.md``)
- ``outputs["pred_logits"]``: [L, B, Q, C+1] (index C = no object), ``[-1]`` = final layer.
- ``outputs["pred_boxes"]``: [L, B, Q, 4] normalised ``cxcywh``.
- ``batch["labels"]`` [B, G] int32, ``batch["boxes"]`` [B, G, 4] normalised ``cxcywh``,
  ``batch["box_valid"]`` [B, G] bool; optional ``batch["image_valid"]`` [B] bool.

Normalisation of the box losses. The original DETR divides the summed L1 / GIoU
losses by ``num_boxes = all_reduce(#targets) / world_size`` on each device and
then DDP averages the per-device gradients over ``world_size`` devices. That is
the same as dividing the sum over the *global* batch by the *global* number of
boxes. Here training is one ``jit`` over the global (possibly sharded) batch, so
a plain ``jnp.sum`` over the batch already is the all-device total, and dividing
by ``max(total valid boxes, 1)`` reproduces the original exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.matching.base import Matcher, match_to_query_targets
from detr_jax.matching.costs import detr_cost
from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, elementwise_giou


def _flatten_layers(x: jnp.ndarray) -> jnp.ndarray:
    """[L, B, ...] -> [L*B, ...]."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _compute_match(
    logits: jnp.ndarray,
    boxes: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_valid: jnp.ndarray,
    query_valid: jnp.ndarray,
    matcher: Matcher,
    cost_weights: tuple[float, float, float],
) -> jnp.ndarray:
    """One matcher call for all layers: [L, B, Q, *] predictions -> match [L, B, G]."""
    num_layers, batch = logits.shape[:2]
    tile = lambda x: _flatten_layers(jnp.broadcast_to(x, (num_layers,) + x.shape))
    cost = detr_cost(
        _flatten_layers(logits),
        _flatten_layers(boxes),
        tile(gt_labels),
        tile(gt_boxes),
        tile(gt_valid),
        *cost_weights,
        query_valid=tile(query_valid),
    )  # [L*B, Q, G]
    match = matcher(cost, tile(gt_valid))
    return match.reshape(num_layers, batch, gt_labels.shape[-1]).astype(jnp.int32)


def _weighted_ce(
    logits: jnp.ndarray,
    target_classes: jnp.ndarray,
    query_weight: jnp.ndarray,
    class_weight: jnp.ndarray,
    label_smoothing: float,
) -> jnp.ndarray:
    """Class-weighted CE per layer, averaged like torch ``F.cross_entropy(weight=...)``.

    logits [L, B, Q, K], target_classes [L, B, Q], query_weight [B, Q] (0/1),
    class_weight [K] -> [L] = sum(w_i * ce_i) / sum(w_i) over the B*Q queries,
    with ``w_i = class_weight[target_i] * query_weight_i``.
    """
    num_logits = logits.shape[-1]
    log_p = jax.nn.log_softmax(logits, axis=-1)
    target = jax.nn.one_hot(target_classes, num_logits, dtype=jnp.float32)
    # optax.smooth_labels style; a no-op for label_smoothing == 0 (may be traced).
    target = target * (1.0 - label_smoothing) + label_smoothing / num_logits
    ce = -jnp.sum(target * log_p, axis=-1)  # [L, B, Q]
    w = class_weight[target_classes] * query_weight[None]
    return jnp.sum(w * ce, axis=(1, 2)) / jnp.maximum(jnp.sum(w, axis=(1, 2)), 1e-12)


def detr_loss(
    outputs: dict,
    batch: dict,
    matcher: Matcher,
    *,
    num_classes: int,
    eos_coef: float = 0.1,
    label_smoothing: float = 0.0,
    weight_ce: float = 1.0,
    weight_bbox: float = 5.0,
    weight_giou: float = 2.0,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    aux_loss: bool = True,
    match: jnp.ndarray | None = None,
    query_valid: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """DETR set loss summed over decoder layers.

    Every used layer is matched on its own (one matcher call on [L*B, Q, G]); with
    ``aux_loss=False`` only the final layer is used. Per layer:
    ``weight_ce * CE + weight_bbox * L1 + weight_giou * (1 - GIoU)``, where CE is
    the class-weighted mean over all (valid) queries (no-object weight
    ``eos_coef``; optional optax-style label smoothing over the C+1 classes), and
    L1 (summed over the 4 ``cxcywh`` coords) and ``1 - GIoU`` (on ``xyxy``) are
    summed over matched pairs and divided by ``num_boxes = max(#valid GT, 1)``.

    Args:
      outputs: ``pred_logits`` [L, B, Q, C+1] and ``pred_boxes`` [L, B, Q, 4]
        (normalised ``cxcywh``).
      batch: ``labels`` [B, G], ``boxes`` [B, G, 4] normalised ``cxcywh``,
        ``box_valid`` [B, G]; if ``image_valid`` [B] is present, queries of
        invalid (filler) images are left out of CE and cardinality error.
      matcher: a :class:`~detr_jax.matching.base.Matcher`.
      num_classes: C (logit index C is "no object").
      match: optional precomputed [L, B, G] int32 (query per GT, -1 = none) that
        bypasses the matcher; with ``aux_loss=False`` its last layer is used
        (a [1, B, G] or [B, G] array is also accepted then).
      query_valid: optional [B, Q] bool; False queries are left out of the CE and
        of matching (their cost rows are set very high).

    Returns:
      ``(loss, metrics)``: scalar float32 total, and a dict of float32 scalars:
      ``loss_ce``, ``loss_bbox``, ``loss_giou`` (final layer, unweighted;
      ``loss_giou`` is the mean of 1 - GIoU), ``loss_{ce,bbox,giou}_{i}`` for
      aux layers ``i = 0..L-2`` (only if ``aux_loss``), ``class_error``,
      ``cardinality_error``, ``num_boxes`` and ``loss``.
    """
    logits = jnp.asarray(outputs["pred_logits"], jnp.float32)
    boxes = jnp.asarray(outputs["pred_boxes"], jnp.float32)
    if logits.ndim != 4 or boxes.shape != logits.shape[:3] + (4,):
        raise ValueError(
            f"expected pred_logits [L,B,Q,C+1] and pred_boxes [L,B,Q,4], got "
            f"{logits.shape} and {boxes.shape}"
        )
    if logits.shape[-1] != num_classes + 1:
        raise ValueError(f"pred_logits has {logits.shape[-1]} classes, expected {num_classes + 1}")
    total_layers = logits.shape[0]
    if not aux_loss:
        logits, boxes = logits[-1:], boxes[-1:]
    num_layers, bsz, num_q, _ = logits.shape

    gt_labels = jnp.asarray(batch["labels"], jnp.int32)
    gt_boxes = jnp.asarray(batch["boxes"], jnp.float32)
    gt_valid = jnp.asarray(batch["box_valid"], bool)
    num_g = gt_labels.shape[-1]

    image_valid = batch.get("image_valid")
    image_valid = jnp.ones((bsz,), bool) if image_valid is None else jnp.asarray(image_valid, bool)
    qv = jnp.ones((bsz, num_q), bool) if query_valid is None else jnp.asarray(query_valid, bool)

    # ---- matching (no gradient) -------------------------------------------------
    if match is None:
        match = _compute_match(
            logits,
            boxes,
            gt_labels,
            gt_boxes,
            gt_valid,
            qv,
            matcher,
            (cost_class, cost_bbox, cost_giou),
        )
    else:
        match = jnp.asarray(match, jnp.int32)
        if match.ndim == 2:
            match = match[None]
        if match.shape[0] == total_layers and num_layers != total_layers:
            match = match[-num_layers:]
        if match.shape != (num_layers, bsz, num_g):
            raise ValueError(
                f"match must be [L,B,G]=({total_layers},{bsz},{num_g}), got {match.shape}"
            )
    match = jax.lax.stop_gradient(match)

    tile = lambda x: _flatten_layers(jnp.broadcast_to(x, (num_layers,) + x.shape))
    target_classes, _, matched = match_to_query_targets(
        _flatten_layers(match),
        tile(gt_labels),
        tile(gt_boxes),
        tile(gt_valid),
        num_q,
        num_classes,
    )
    target_classes = target_classes.reshape(num_layers, bsz, num_q)
    matched = matched.reshape(num_layers, bsz, num_q)

    # ---- classification ------------------------------------------------------------
    class_weight = jnp.ones((num_classes + 1,), jnp.float32).at[num_classes].set(eos_coef)
    query_weight = (qv & image_valid[:, None]).astype(jnp.float32)
    loss_ce = _weighted_ce(logits, target_classes, query_weight, class_weight, label_smoothing)

    # ---- boxes (matched pairs only) --------------------------------------------
    num_boxes = jnp.maximum(jnp.sum(gt_valid).astype(jnp.float32), 1.0)
    pair_ok = gt_valid[None] & (match >= 0) & (match < num_q)  # [L, B, G]
    q_idx = jnp.clip(match, 0, num_q - 1)[..., None]
    src = jnp.take_along_axis(boxes, jnp.broadcast_to(q_idx, match.shape + (4,)), axis=2)
    tgt = jnp.broadcast_to(gt_boxes, src.shape)
    l1 = jnp.where(pair_ok, jnp.sum(jnp.abs(src - tgt), axis=-1), 0.0)
    giou = elementwise_giou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
    one_minus_giou = jnp.where(pair_ok, 1.0 - giou, 0.0)
    loss_bbox = jnp.sum(l1, axis=(1, 2)) / num_boxes  # [L]
    loss_giou = jnp.sum(one_minus_giou, axis=(1, 2)) / num_boxes  # [L]

    per_layer = weight_ce * loss_ce + weight_bbox * loss_bbox + weight_giou * loss_giou
    total = jnp.sum(per_layer).astype(jnp.float32)

    metrics: dict[str, jnp.ndarray] = {
        "loss": total,
        "loss_ce": loss_ce[-1],
        "loss_bbox": loss_bbox[-1],
        "loss_giou": loss_giou[-1],
        "num_boxes": num_boxes,
    }
    for i in range(num_layers - 1):
        metrics[f"loss_ce_{i}"] = loss_ce[i]
        metrics[f"loss_bbox_{i}"] = loss_bbox[i]
        metrics[f"loss_giou_{i}"] = loss_giou[i]
    metrics.update(
        _final_layer_metrics(
            jax.lax.stop_gradient(logits[-1]),
            target_classes[-1],
            matched[-1],
            gt_valid,
            qv,
            image_valid,
            num_classes,
        )
    )
    return total, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}


def _final_layer_metrics(
    logits: jnp.ndarray,
    target_classes: jnp.ndarray,
    matched: jnp.ndarray,
    gt_valid: jnp.ndarray,
    query_valid: jnp.ndarray,
    image_valid: jnp.ndarray,
    num_classes: int,
) -> dict[str, jnp.ndarray]:
    """``class_error`` and ``cardinality_error`` of one layer.

    logits [B, Q, C+1], target_classes / matched / query_valid [B, Q],
    gt_valid [B, G], image_valid [B].
    """
    pred = jnp.argmax(logits, axis=-1)  # [B, Q], over all C+1 logits as in DETR
    n_matched = jnp.sum(matched)
    correct = jnp.sum((pred == target_classes) & matched)
    accuracy = 100.0 * correct / jnp.maximum(n_matched, 1)
    class_error = jnp.where(n_matched > 0, 100.0 - accuracy, 0.0)

    card_pred = jnp.sum((pred != num_classes) & query_valid, axis=-1)  # [B]
    card_err = jnp.abs(card_pred - jnp.sum(gt_valid, axis=-1)).astype(jnp.float32)
    img_w = image_valid.astype(jnp.float32)
    cardinality_error = jnp.sum(card_err * img_w) / jnp.maximum(jnp.sum(img_w), 1.0)
    return {"class_error": class_error, "cardinality_error": cardinality_error}
