"""Turn raw DETR outputs into scored detections in original-image pixels.

:func:`postprocess` (softmax heads) follows the original DETR ``PostProcess``: softmax over
the C+1 logits, drop the last ("no object") column, keep per query the best class and its
probability, then keep the ``top_k`` queries with the highest score.

:func:`postprocess_sigmoid` (sigmoid heads) follows Deformable DETR's ``PostProcess``: a
sigmoid per (query, class) and the ``top_k`` best of all Q*C pairs, so one query may give
several detections with different classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.ops.box_ops import box_cxcywh_to_xyxy


def postprocess(
    pred_logits: jax.Array,
    pred_boxes: jax.Array,
    orig_size: jax.Array,
    top_k: int,
) -> dict[str, jax.Array]:
    """Scores, labels and pixel boxes of the ``top_k`` best queries per image.

    Args:
      pred_logits: float [B, Q, C+1]; index C is "no object".
      pred_boxes: float [B, Q, 4], normalised cxcywh (relative to the unpadded image).
      orig_size: int [B, 2], (h, w) of each original image.
      top_k: number of queries kept per image (static); K = min(top_k, Q).

    Returns:
      dict with
        ``scores``: float32 [B, K], best object-class probability, sorted descending;
        ``labels``: int32 [B, K], contiguous label in 0..C-1;
        ``boxes``: float32 [B, K, 4], xyxy absolute pixels of the original image
        (not clipped to the image);
        ``queries``: int32 [B, K], the query index (0..Q-1) of each kept detection.
    """
    probs = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)[..., :-1]  # [B, Q, C]
    scores = jnp.max(probs, axis=-1)  # [B, Q]
    labels = jnp.argmax(probs, axis=-1).astype(jnp.int32)  # [B, Q]

    k = min(int(top_k), scores.shape[-1])
    top_scores, idx = jax.lax.top_k(scores, k)  # [B, K]
    top_labels = jnp.take_along_axis(labels, idx, axis=-1)
    top_boxes = jnp.take_along_axis(pred_boxes.astype(jnp.float32), idx[..., None], axis=1)

    return {
        "scores": top_scores,
        "labels": top_labels,
        "boxes": _to_pixels(top_boxes, orig_size),
        "queries": idx.astype(jnp.int32),
    }


def _to_pixels(boxes: jax.Array, orig_size: jax.Array) -> jax.Array:
    """[B, K, 4] normalised cxcywh -> float32 [B, K, 4] xyxy pixels of ``orig_size`` [B, 2]."""
    h = orig_size[:, 0].astype(jnp.float32)
    w = orig_size[:, 1].astype(jnp.float32)
    scale = jnp.stack([w, h, w, h], axis=-1)[:, None, :]  # [B, 1, 4]
    return box_cxcywh_to_xyxy(boxes) * scale


def postprocess_sigmoid(
    pred_logits: jax.Array,
    pred_boxes: jax.Array,
    orig_size: jax.Array,
    top_k: int,
) -> dict[str, jax.Array]:
    """Scores, labels and pixel boxes of the ``top_k`` best (query, class) pairs per image.

    Args:
      pred_logits: float [B, Q, C] sigmoid class logits (no no-object column).
      pred_boxes: float [B, Q, 4], normalised cxcywh (relative to the unpadded image).
      orig_size: int [B, 2], (h, w) of each original image.
      top_k: number of (query, class) pairs kept per image (static); K = min(top_k, Q*C).

    Returns:
      the keys of :func:`postprocess`:
        ``scores``: float32 [B, K], ``sigmoid(pred_logits)`` of the pair, sorted descending
        over all Q*C pairs (flat index ``i = q * C + c``);
        ``labels``: int32 [B, K], ``i % C``;
        ``queries``: int32 [B, K], ``i // C`` (a query may appear more than once);
        ``boxes``: float32 [B, K, 4], that query's box as xyxy absolute pixels of the original
        image (not clipped).
    """
    bsz, num_q, num_classes = pred_logits.shape
    probs = jax.nn.sigmoid(pred_logits.astype(jnp.float32)).reshape(bsz, num_q * num_classes)
    k = min(int(top_k), num_q * num_classes)
    top_scores, idx = jax.lax.top_k(probs, k)  # [B, K]
    queries = (idx // num_classes).astype(jnp.int32)
    top_boxes = jnp.take_along_axis(pred_boxes.astype(jnp.float32), queries[..., None], axis=1)
    return {
        "scores": top_scores,
        "labels": (idx % num_classes).astype(jnp.int32),
        "boxes": _to_pixels(top_boxes, orig_size),
        "queries": queries,
    }
