"""Turn raw DETR outputs into scored detections in original-image pixels.

Follows the original DETR ``PostProcess``: softmax over the C+1 logits, drop the
last ("no object") column, keep per query the best class and its probability,
then keep the ``top_k`` queries with the highest score.
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

    h = orig_size[:, 0].astype(jnp.float32)
    w = orig_size[:, 1].astype(jnp.float32)
    scale = jnp.stack([w, h, w, h], axis=-1)[:, None, :]  # [B, 1, 4]
    boxes_xyxy = box_cxcywh_to_xyxy(top_boxes) * scale
    return {
        "scores": top_scores,
        "labels": top_labels,
        "boxes": boxes_xyxy,
        "queries": idx.astype(jnp.int32),
    }
