"""What the criterion hands every loss term: the matched targets of one batch, all layers."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class Targets:
    """Matched targets for L decoder layers, B images, Q queries and G ground-truth slots.

    match: int32 [L, B, G], the query matched to each slot (-1 = none).
    target_classes: int32 [L, B, Q], each query's class (C = no object, also for sigmoid
    logits, where it means the all-zero one-hot target); matched: bool [L, B, Q].
    gt_labels [B, G] int32, gt_boxes [B, G, 4] normalised cxcywh, gt_valid [B, G] bool.
    query_valid [B, Q] bool (False: left out of the class loss and of matching);
    image_valid [B] bool (False: a filler image); query_weight [B, Q] float32 (both, as 0/1).
    num_boxes: float32 scalar, max(#valid ground-truth boxes in the global batch, 1).
    num_classes: C (static Python int). Terms tell the logits apart by their last axis:
    C + 1 = softmax with the no-object column last, C = sigmoid (one logit per class).
    """

    match: jax.Array
    target_classes: jax.Array
    matched: jax.Array
    gt_labels: jax.Array
    gt_boxes: jax.Array
    gt_valid: jax.Array
    query_valid: jax.Array
    image_valid: jax.Array
    query_weight: jax.Array
    num_boxes: jax.Array
    num_classes: int = flax.struct.field(pytree_node=False)
