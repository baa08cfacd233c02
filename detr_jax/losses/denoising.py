"""The `denoising` loss term: DN-DETR / DINO supervision of the denoising queries (no matching).

The query generator (detr_jax/models/queries/denoising.py) feeds K groups of noised ground-truth
copies to the decoder; the detector splits their predictions off into `outputs["dn_outputs"]`
and passes `outputs["dn_meta"]` (docs/interfaces.md). Their "matching" is fixed by construction:
denoising query j reconstructs ground-truth slot `dn_gt_index[b, j]` on every decoder layer.

- class term: positives get their ground truth's (un-noised) label as target, negatives and
  other real queries "no object"; padding queries (`dn_valid` False) and filler images
  (`image_valid` False) are left out. Sigmoid logits [.., C]: the focal loss of the
  `focal_labels` term (one-hot targets, all zeros for no object), summed over all (B, Q_dn, C)
  elements. Softmax logits [.., C+1]: DETR's cross-entropy with the no-object class weighted
  `eos_coef` (the `labels` term's weighted mean, which needs no normalisation).
- box terms: L1 (summed over the 4 cxcywh coordinates) and 1 - GIoU of the positives only.

Normalisation (as HF RT-DETR's `RTDetrLoss`, which multiplies its `num_boxes` by
`dn_num_group` for the dn layers, and DINO's `num_boxes * scalar`): the summed focal / L1 /
GIoU losses are divided by `num_boxes * dn_groups`, `num_boxes = max(#valid boxes in the batch,
1)` (the criterion's), i.e. by the number of positive denoising queries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.losses.focal import sigmoid_focal_elements
from detr_jax.losses.labels import _weighted_ce
from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, elementwise_giou

DN_LOSSES = ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn")


def _gather_slots(x: jax.Array, index: jax.Array) -> jax.Array:
    """x [B, G, ...] gathered at index int [B, Q] (clipped to [0, G)) -> [B, Q, ...]."""
    idx = jnp.clip(index, 0, max(x.shape[1] - 1, 0))
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, jnp.broadcast_to(idx, idx.shape[:2] + x.shape[2:]), axis=1)


def denoising_term(
    outputs: dict,
    batch: dict,
    t: object = None,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    eos_coef: float = 0.1,
    num_classes: int | None = None,
) -> dict[str, jax.Array]:
    """`loss_ce_dn`, `loss_bbox_dn`, `loss_giou_dn`: float32 [L], one per decoder layer.

    Args:
      outputs: `dn_outputs` = {`pred_logits` [L, B, Q_dn, C] (sigmoid) or [L, B, Q_dn, C+1]
        (softmax, no object last), `pred_boxes` [L, B, Q_dn, 4] normalised cxcywh} and
        `dn_meta` = {`dn_groups` K, `dn_positive` bool [B, Q_dn], `dn_gt_index` int [B, Q_dn]
        (-1 = padding), optional `dn_valid` bool [B, Q_dn] (default `dn_gt_index >= 0`)}.
        Without `dn_outputs` (evaluation, no denoising queries) every loss is zeros [L], L =
        `outputs["pred_logits"].shape[0]` (the layers the criterion uses).
      batch: `labels` int [B, G], `boxes` float [B, G, 4] normalised cxcywh, `box_valid` bool
        [B, G], optional `image_valid` bool [B].
      t: unused (the term needs no matching).
      alpha, gamma: the focal loss (sigmoid logits). eos_coef: no-object weight (softmax).
      num_classes: C, filled in by the criterion from its `num_classes`: logits with C columns
        are sigmoid, C + 1 softmax; None takes them as softmax (as the criterion does).
    """
    del t
    dn_outputs, meta = outputs.get("dn_outputs"), outputs.get("dn_meta")
    if dn_outputs is None or meta is None:
        zeros = jnp.zeros((outputs["pred_logits"].shape[0],), jnp.float32)
        return dict.fromkeys(DN_LOSSES, zeros)
    logits = jnp.asarray(dn_outputs["pred_logits"], jnp.float32)  # [L, B, Q_dn, K]
    boxes = jnp.asarray(dn_outputs["pred_boxes"], jnp.float32)  # [L, B, Q_dn, 4]
    if logits.ndim != 4 or boxes.shape != logits.shape[:3] + (4,):
        raise ValueError(f"expected dn_outputs pred_logits [L,B,Q_dn,C(+1)] and pred_boxes "
                         f"[L,B,Q_dn,4], got {logits.shape} and {boxes.shape}")
    gt_index = jnp.asarray(meta["dn_gt_index"], jnp.int32)  # [B, Q_dn]
    dn_valid = meta.get("dn_valid")
    dn_valid = gt_index >= 0 if dn_valid is None else jnp.asarray(dn_valid, bool) & (gt_index >= 0)
    gt_labels = jnp.asarray(batch["labels"], jnp.int32)
    gt_boxes = jnp.asarray(batch["boxes"], jnp.float32)
    gt_valid = jnp.asarray(batch["box_valid"], bool)
    bsz = gt_labels.shape[0]
    image_valid = batch.get("image_valid")
    image_valid = (jnp.ones((bsz,), bool) if image_valid is None
                   else jnp.asarray(image_valid, bool))

    real = dn_valid & image_valid[:, None]  # [B, Q_dn]: queries that enter the class term
    positive = jnp.asarray(meta["dn_positive"], bool) & real & _gather_slots(gt_valid, gt_index)
    target_labels = _gather_slots(gt_labels, gt_index)  # [B, Q_dn]
    # Non-positives get a unit box, so that GIoU (and its gradient) stays finite on padding.
    unit = jnp.asarray([0.5, 0.5, 1.0, 1.0], jnp.float32)
    target_boxes = jnp.where(positive[..., None], _gather_slots(gt_boxes, gt_index), unit)
    num_boxes = jnp.maximum(jnp.sum(gt_valid).astype(jnp.float32), 1.0)
    norm = num_boxes * jnp.asarray(meta["dn_groups"], jnp.float32)

    num_logits = logits.shape[-1]
    sigmoid = num_classes is not None and num_logits == int(num_classes)
    if num_classes is not None and num_logits not in (num_classes, num_classes + 1):
        raise ValueError(f"dn_outputs pred_logits has {num_logits} classes; num_classes="
                         f"{num_classes} needs {num_classes + 1} (softmax) or {num_classes}")
    if sigmoid:
        onehot = jax.nn.one_hot(target_labels, num_logits, dtype=jnp.float32)
        onehot = onehot * positive[..., None].astype(jnp.float32)
        elements = sigmoid_focal_elements(logits, onehot[None], alpha, gamma)  # [L, B, Q, C]
        per_query = jnp.sum(elements, axis=-1) * real[None].astype(jnp.float32)
        loss_ce = jnp.sum(per_query, axis=(1, 2)) / norm
    else:
        c = num_logits - 1
        target_classes = jnp.where(positive, target_labels, c)
        class_weight = jnp.ones((num_logits,), jnp.float32).at[c].set(eos_coef)
        target_classes = jnp.broadcast_to(target_classes, logits.shape[:3])
        loss_ce = _weighted_ce(logits, target_classes, real.astype(jnp.float32), class_weight,
                               0.0)

    pos = positive[None]  # [1, B, Q_dn]
    l1 = jnp.where(pos, jnp.sum(jnp.abs(boxes - target_boxes[None]), axis=-1), 0.0)
    giou = elementwise_giou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes[None]))
    one_minus_giou = jnp.where(pos, 1.0 - giou, 0.0)
    return {
        "loss_ce_dn": loss_ce,
        "loss_bbox_dn": jnp.sum(l1, axis=(1, 2)) / norm,
        "loss_giou_dn": jnp.sum(one_minus_giou, axis=(1, 2)) / norm,
    }
