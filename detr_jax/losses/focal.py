"""The `focal_labels` loss term: Deformable DETR's sigmoid focal loss on [.., C] class logits.

Sigmoid heads (Deformable DETR, DINO) predict one independent logit per class and have no
no-object column: a query matched to a box of class c has the one-hot target e_c over the C
columns, an unmatched query the all-zero target. Every (query, class) element contributes the
RetinaNet focal loss (Lin et al., 2017)

    FL(x, y) = alpha_t * (1 - p_t)^gamma * BCE_with_logits(x, y),
    p = sigmoid(x), p_t = p y + (1 - p)(1 - y), alpha_t = alpha y + (1 - alpha)(1 - y),

and the loss of a layer is the sum over all B * Q * C elements divided by `num_boxes`. That is
the original's `sigmoid_focal_loss(...) * num_queries` (= `loss.mean(1).sum() / num_boxes * Q`).

Numerics: everything is float32 and in log-sigmoid form (BCE = -log sigmoid(+-x) and
(1 - p_t)^gamma = exp(gamma * log sigmoid(-+x))), so |logits| of 100 or more give finite values
and gradients (no 1 - p cancellation, no log(0)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.losses.labels import class_error
from detr_jax.losses.targets import Targets


def sigmoid_focal_elements(
    logits: jax.Array, targets: jax.Array, alpha: float = 0.25, gamma: float = 2.0
) -> jax.Array:
    """Elementwise sigmoid focal loss (no reduction).

    Args:
      logits: float [...], one logit per (query, class).
      targets: float [...] of the same shape, 0 or 1.
      alpha: weight of the positives (1 - alpha for the negatives); alpha < 0 turns the
        weighting off (torchvision's convention).
      gamma: focusing exponent, >= 0.

    Returns:
      float32 [...], `alpha_t * (1 - p_t)^gamma * BCE_with_logits(logits, targets)`.
    """
    x = jnp.asarray(logits, jnp.float32)
    y = jnp.asarray(targets, jnp.float32)
    log_p = jax.nn.log_sigmoid(x)  # log p
    log_1mp = jax.nn.log_sigmoid(-x)  # log (1 - p)
    bce = -(y * log_p + (1.0 - y) * log_1mp)
    log_1m_pt = y * log_1mp + (1.0 - y) * log_p  # log (1 - p_t)
    loss = jnp.exp(gamma * log_1m_pt) * bce
    if alpha >= 0:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return loss


def focal_labels_term(
    outputs: dict, batch: dict, t: Targets, *, alpha: float = 0.25, gamma: float = 2.0
) -> dict[str, jax.Array]:
    """`loss_ce` [L] (sigmoid focal loss) and `class_error` (final layer, logged).

    Reads `outputs["pred_logits"]` [L, B, Q, C] (sigmoid logits, C = `t.num_classes`, no
    no-object column) and the matched targets `t` (`matched` / `target_classes` [L, B, Q],
    `query_weight` [B, Q], `num_boxes`).

    `loss_ce[l]` = sum over the B * Q * C elements of layer l of `query_weight *` focal loss
    (one-hot targets of the matched queries, zeros for the others), divided by `t.num_boxes`;
    queries of weight 0 (invalid queries, filler images) contribute nothing. `class_error`: the
    percentage of the final layer's matched queries whose argmax over the C logits is not
    their class (0 when none is matched), without gradient.
    """
    logits = jnp.asarray(outputs["pred_logits"], jnp.float32)
    num_classes = logits.shape[-1]
    if num_classes != t.num_classes:
        raise ValueError(
            f"focal_labels needs sigmoid logits [L, B, Q, C] with C = num_classes = "
            f"{t.num_classes}, got {logits.shape} (softmax heads with a no-object column use the "
            "'labels' term; build the Criterion with num_classes=C)")
    # One-hot over the C columns for matched queries; unmatched ones (class C) are all zeros.
    onehot = jax.nn.one_hot(t.target_classes, num_classes, dtype=jnp.float32)
    onehot = onehot * t.matched[..., None].astype(jnp.float32)
    elements = sigmoid_focal_elements(logits, onehot, alpha, gamma)  # [L, B, Q, C]
    per_query = jnp.sum(elements, axis=-1) * t.query_weight[None]  # [L, B, Q]
    loss_ce = jnp.sum(per_query, axis=(1, 2)) / t.num_boxes

    return {"loss_ce": loss_ce, "class_error": class_error(logits, t)}
