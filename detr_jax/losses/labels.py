"""Loss terms on the class logits: `labels` (DETR's weighted cross-entropy and the logged
`class_error`) and `cardinality` (the logged `cardinality_error`). Sigmoid heads' focal loss is
the `focal_labels` term (detr_jax/losses/focal.py).

Both read the matched targets the criterion prepares (detr_jax/losses/criterion.py,
`Targets`) and return per-layer losses [L] (`loss_ce`) or final-layer metrics (scalars).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.losses.targets import Targets


def _weighted_ce(
    logits: jax.Array,
    target_classes: jax.Array,
    query_weight: jax.Array,
    class_weight: jax.Array,
    label_smoothing: float,
) -> jax.Array:
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


def labels_term(
    outputs: dict, batch: dict, t: Targets, *, eos_coef: float = 0.1, label_smoothing: float = 0.0
) -> dict[str, jax.Array]:
    """`loss_ce` [L]: CE over the C + 1 logits of every (valid) query, the no-object class
    weighted `eos_coef` (optional optax-style label smoothing); `class_error` (final layer,
    percent of matched queries whose argmax is wrong; logged)."""
    logits = outputs["pred_logits"]
    num_classes = logits.shape[-1] - 1
    if num_classes != t.num_classes:
        raise ValueError(
            f"labels needs softmax logits [L, B, Q, C+1] with C = num_classes = {t.num_classes}, "
            f"got {logits.shape} (sigmoid heads without a no-object column use 'focal_labels')")
    class_weight = jnp.ones((num_classes + 1,), jnp.float32).at[num_classes].set(eos_coef)
    loss_ce = _weighted_ce(logits, t.target_classes, t.query_weight, class_weight,
                           label_smoothing)
    # argmax over all C + 1 logits, as DETR
    return {"loss_ce": loss_ce, "class_error": class_error(logits, t)}


def class_error(logits: jax.Array, t: Targets) -> jax.Array:
    """Percent of the final layer's matched queries whose argmax over `logits[-1]` [B, Q, K]
    is not their target class (0 when none is matched); logged, no gradient."""
    pred = jnp.argmax(jax.lax.stop_gradient(logits[-1]), axis=-1)  # [B, Q]
    matched = t.matched[-1]
    n_matched = jnp.sum(matched)
    correct = jnp.sum((pred == t.target_classes[-1]) & matched)
    accuracy = 100.0 * correct / jnp.maximum(n_matched, 1)
    return jnp.where(n_matched > 0, 100.0 - accuracy, 0.0)


def cardinality_term(outputs: dict, batch: dict, t: Targets) -> dict[str, jax.Array]:
    """`cardinality_error` (final layer): mean over valid images of |#predicted objects -
    #ground-truth boxes| among the valid queries (logged, no gradient).

    A query predicts an object when, with softmax logits [.., C+1], its argmax is an object
    class (DETR), and with sigmoid logits [.., C] (`t.num_classes` columns), when its largest
    class probability exceeds 0.5 (Deformable DETR), i.e. its largest logit is > 0.
    """
    final = jax.lax.stop_gradient(jnp.asarray(outputs["pred_logits"][-1], jnp.float32))
    if final.shape[-1] == t.num_classes:  # sigmoid: max_c sigmoid(x_c) > 0.5 <=> max_c x_c > 0
        is_object = jax.nn.sigmoid(jnp.max(final, axis=-1)) > 0.5
    else:
        is_object = jnp.argmax(final, axis=-1) != final.shape[-1] - 1
    card_pred = jnp.sum(is_object & t.query_valid, axis=-1)  # [B]
    card_err = jnp.abs(card_pred - jnp.sum(t.gt_valid, axis=-1)).astype(jnp.float32)
    img_w = t.image_valid.astype(jnp.float32)
    return {"cardinality_error": jnp.sum(card_err * img_w) / jnp.maximum(jnp.sum(img_w), 1.0)}
