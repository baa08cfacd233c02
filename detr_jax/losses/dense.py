"""The `dense` loss term: class supervision of the backbone's feature map (a from-scratch aid).

DETR's class loss reaches the backbone only through the decoder's cross-attention. From random
initialisation that attention is nearly uniform, so the class gradient is spread evenly over all
positions and the backbone never learns which position holds which class: a linear probe of the
C5 features of a from-scratch run on the shapes data stayed at chance after 4800 steps (see
docs/benchmarks.md). This loss gives every feature position a direct target: the label of the
smallest ground-truth box that contains the position's centre (or whose centre lies in the
position's cell), "no object" elsewhere. It is a 1x1 head on C5 with a weighted cross-entropy,
off by default (`model.heads.dense_aux`, the `dense` term and `loss.weights.loss_dense`);
the detector's outputs and its set loss are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dense_targets(
    feat_hw: tuple[int, int],
    padded_hw: tuple[int, int],
    size: jax.Array,
    boxes: jax.Array,
    labels: jax.Array,
    box_valid: jax.Array,
    num_classes: int,
) -> jax.Array:
    """Per-position class targets.

    Args:
      feat_hw: (h, w) of the feature map; padded_hw: (H, W) of the padded input canvas.
      size: int [B, 2] (h, w) of each unpadded image in pixels.
      boxes: [B, G, 4] normalised cxcywh (relative to the unpadded image); labels [B, G];
        box_valid [B, G].

    Returns:
      int32 [B, h, w]: a label in 0..num_classes-1, or num_classes ("no object").
    """
    h, w = feat_hw
    sy, sx = padded_hw[0] / h, padded_hw[1] / w  # stride in pixels
    hh = jnp.maximum(size[:, 0].astype(jnp.float32), 1.0)[:, None, None]  # [B,1,1]
    ww = jnp.maximum(size[:, 1].astype(jnp.float32), 1.0)[:, None, None]
    iy = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    ix = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    # Position centres and cell edges, normalised by each image's size: [B, h, 1] / [B, 1, w].
    yc, xc = (iy + 0.5) * sy / hh, (ix + 0.5) * sx / ww
    y0, y1 = iy * sy / hh, (iy + 1) * sy / hh
    x0, x1 = ix * sx / ww, (ix + 1) * sx / ww

    cx, cy, bw, bh = (boxes[..., k][:, :, None, None] for k in range(4))  # [B, G, 1, 1]
    yc, xc, y0, y1, x0, x1 = (a[:, None] for a in (yc, xc, y0, y1, x0, x1))
    centre_inside = (jnp.abs(yc - cy) <= bh / 2) & (jnp.abs(xc - cx) <= bw / 2)
    owns_centre = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    hit = (centre_inside | owns_centre) & box_valid[:, :, None, None]  # [B, G, h, w]
    area = jnp.where(hit, (bw * bh), jnp.inf)
    best = jnp.argmin(area, axis=1)  # [B, h, w]
    any_hit = jnp.any(hit, axis=1)
    label = jnp.take_along_axis(labels[:, :, None, None], best[:, None], axis=1)[:, 0]
    return jnp.where(any_hit, label, num_classes).astype(jnp.int32)


def dense_class_loss(
    logits: jax.Array,
    mask: jax.Array,
    batch: dict,
    num_classes: int,
    eos_coef: float = 0.1,
) -> jax.Array:
    """Weighted CE over real feature positions (no-object weight `eos_coef`).

    logits: [B, h, w, num_classes + 1]; mask: bool [B, h, w] (real positions); batch as in
    docs/interfaces.md. Returns a float32 scalar.
    """
    b, h, w, _ = logits.shape
    target = dense_targets(
        (h, w),
        batch["image"].shape[1:3],
        batch["size"],
        batch["boxes"],
        batch["labels"],
        batch["box_valid"],
        num_classes,
    )
    target = jax.lax.stop_gradient(target)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ce = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    weight = jnp.where(target == num_classes, eos_coef, 1.0) * mask.astype(jnp.float32)
    return jnp.sum(weight * ce) / jnp.maximum(jnp.sum(weight), 1e-6)


def dense_term(outputs: dict, batch: dict, t: object = None, *, eos_coef: float = 0.1
               ) -> dict[str, jax.Array]:
    """`loss_dense` (scalar) from the heads' `dense_logits` and `dense_mask` (needs
    `model.heads.dense_aux`); not per decoder layer and needs no matching."""
    del t
    if "dense_logits" not in outputs:
        raise ValueError("loss term 'dense' needs the dense head: set model.heads.dense_aux=True")
    num_classes = outputs["dense_logits"].shape[-1] - 1
    loss = dense_class_loss(outputs["dense_logits"], outputs["dense_mask"], batch, num_classes,
                            eos_coef)
    return {"loss_dense": loss}
