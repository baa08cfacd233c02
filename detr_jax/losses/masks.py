"""Mask loss terms: `masks` (Mask2Former, on sampled points) and `masks_full` (DETR segm).

Both read `outputs["pred_masks"]` float32 [L_m, B, Q, h, w] (mask logits at stride 4 of the
padded canvas, h = ceil(Hb / 4)) and `batch["masks"]` uint8 [B, G, Hb, Wb] (0/1 on the padded
canvas, slot-aligned with `boxes`; docs/interfaces.md "Segmentation"), and supervise every
matched (query, ground-truth slot) pair: the query `t.match[l, b, g]` with the mask of slot g.
Shapes are static: all G slots are computed with their matched query (slot 0's query for
unmatched ones) and weighted by `gt_valid & matched`; the sums are divided by `t.num_boxes`.

Layers: `pred_masks` may have fewer layers than the matched targets (DETR's mask head predicts
only after the last decoder layer: L_m = 1 of L = 6). Mask layer i is the last L_m layers' i-th,
i.e. it uses `t.match[L - L_m + i]`; the returned losses are [L] with zeros for the first
L - L_m layers, so that the criterion's per-layer sum (sum over layers of weight * loss) counts
each mask layer once; their `loss_mask_<i>` logs then read 0 for layers without masks.

Geometry: points are normalised (x, y) over the padded canvas (Hb, Wb); the stride-4 logits,
which cover (4h, 4w) >= (Hb, Wb) canvas pixels, are read at the same canvas position
(`ops.point_sample.stride_scale`). When Hb and Wb are multiples of 4 (Mask2Former's
size_divisibility 32) this is exactly Mask2Former's sampling and DETR's upsampling to the target
size; otherwise the logits are not stretched onto the canvas (as the originals would) but kept at
their stride. Everything is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.losses.focal import sigmoid_focal_elements
from detr_jax.losses.targets import Targets
from detr_jax.ops.point_sample import MASK_STRIDE, point_sample, stride_scale, uncertainty_points

_HIGHEST = jax.lax.Precision.HIGHEST


def loss_rng(batch: dict, stream: int) -> jax.Array:
    """The PRNG key of one random stream (0: the `masks` loss points, 1: the matcher's mask-cost
    points) from `batch["loss_rng"]` (a key the train step adds), PRNGKey(0) when absent."""
    key = batch.get("loss_rng")
    key = jax.random.PRNGKey(0) if key is None else key
    return jax.random.fold_in(key, stream)


def _mask_inputs(outputs: dict, batch: dict, t: Targets, term: str):
    """Checked (pred_masks [L_m, B, Q, h, w] float32, gt masks [B, G, Hb, Wb], match
    [L_m, B, G], weight [L_m, B, G] float32)."""
    if outputs.get("pred_masks") is None:
        raise ValueError(f"loss.terms.{term} needs outputs['pred_masks'] [L, B, Q, h, w] (a mask "
                         "head)")
    if batch.get("masks") is None:
        raise ValueError(f"loss.terms.{term} needs batch['masks'] [B, G, H, W] "
                         "(data.with_masks=True)")
    pred = jnp.asarray(outputs["pred_masks"], jnp.float32)
    gt = jnp.asarray(batch["masks"])
    num_layers, bsz, num_g = t.match.shape
    num_q = t.target_classes.shape[-1]
    if pred.ndim != 5 or pred.shape[1:3] != (bsz, num_q) or not 1 <= pred.shape[0] <= num_layers:
        raise ValueError(f"loss.terms.{term}: pred_masks must be [L_m, B, Q, h, w] with "
                         f"1 <= L_m <= {num_layers}, B = {bsz}, Q = {num_q}; got {pred.shape}")
    if gt.ndim != 4 or gt.shape[:2] != (bsz, num_g):
        raise ValueError(f"loss.terms.{term}: batch['masks'] must be [B, G, H, W] with B = {bsz},"
                         f" G = {num_g}; got {gt.shape}")
    match = t.match[num_layers - pred.shape[0]:]
    weight = t.gt_valid[None] & (match >= 0) & (match < num_q)
    return pred, gt, match, weight.astype(jnp.float32)


def _matched(pred_l: jax.Array, match_l: jax.Array) -> jax.Array:
    """pred_l [B, Q, h, w] at the query of each slot match_l [B, G] -> [B, G, h, w]."""
    q = jnp.clip(match_l, 0, pred_l.shape[1] - 1)
    return jax.vmap(lambda m, i: m[i])(pred_l, q)


def _pad_layers(values: jax.Array, num_layers: int) -> jax.Array:
    """[L_m] -> [L]: zeros for the first L - L_m layers (those without masks)."""
    return jnp.concatenate([jnp.zeros((num_layers - values.shape[0],), values.dtype), values])


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise BCE with logits (torch's BCEWithLogitsLoss, stable form), float32."""
    x = jnp.asarray(logits, jnp.float32)
    return jnp.maximum(x, 0.0) - x * targets + jnp.log1p(jnp.exp(-jnp.abs(x)))


def dice_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-mask dice loss over the last axis: 1 - (2 sum(p t) + 1) / (sum p + sum t + 1),
    p = sigmoid(logits); [..., P] -> [...]."""
    p = jax.nn.sigmoid(jnp.asarray(logits, jnp.float32))
    numerator = 2.0 * jnp.sum(p * targets, axis=-1)
    denominator = jnp.sum(p, axis=-1) + jnp.sum(targets, axis=-1)
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def masks_term(outputs: dict, batch: dict, t: Targets, *, num_points: int = 12544,
               oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75
               ) -> dict[str, jax.Array]:
    """Mask2Former's mask losses on `num_points` importance-sampled points per matched pair.

    For each mask layer and pair: points by `ops.point_sample.uncertainty_points` on the
    matched query's logits (uncertainty -|logit|, `oversample_ratio`, `importance_sample_ratio`;
    no gradient through the choice), then the logits and the ground-truth mask (as 0/1 float)
    bilinearly sampled there. `loss_mask` [L]: sigmoid BCE averaged over the points, summed over
    the pairs, / `num_boxes`; `loss_dice` [L]: dice over the points (`dice_loss`), summed,
    / `num_boxes`. Random points from `batch["loss_rng"]` (stream 0, `loss_rng`), a different
    key per mask layer.
    """
    pred, gt, match, weight = _mask_inputs(outputs, batch, t, "masks")
    bsz, num_g, big_h, big_w = gt.shape
    h, w = pred.shape[-2:]
    scale = stride_scale((h, w), (big_h, big_w), MASK_STRIDE)
    gt_flat = gt.reshape(bsz * num_g, big_h, big_w)
    base = loss_rng(batch, 0)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(pred.shape[0]))

    def layer(args):
        pred_l, match_l, weight_l, key = args
        src = _matched(pred_l, match_l).reshape(bsz * num_g, h, w)
        pts = uncertainty_points(src, key, num_points, oversample_ratio,
                                 importance_sample_ratio, point_scale=scale)  # [N, P, 2]
        logits = point_sample(src, pts * scale)  # [N, P]
        labels = jax.lax.stop_gradient(point_sample(gt_flat, pts))
        wl = weight_l.reshape(-1)
        bce = jnp.mean(sigmoid_bce(logits, labels), axis=-1)
        return jnp.sum(wl * bce), jnp.sum(wl * dice_loss(logits, labels))

    loss_mask, loss_dice = jax.lax.map(layer, (pred, match, weight, keys))
    num_layers = t.match.shape[0]
    return {"loss_mask": _pad_layers(loss_mask, num_layers) / t.num_boxes,
            "loss_dice": _pad_layers(loss_dice, num_layers) / t.num_boxes}


def upsample_matrix(size_in: int, size_out: int, keep: int) -> jax.Array:
    """float32 [keep, size_in]: rows 0..keep-1 of torch's bilinear (align_corners=False)
    resize from `size_in` to `size_out` along one axis, as a matrix."""
    o = jnp.arange(keep, dtype=jnp.float32)
    src = jnp.maximum((o + 0.5) * (size_in / size_out) - 0.5, 0.0)
    i0 = jnp.floor(src).astype(jnp.int32)
    frac = src - i0
    i1 = jnp.minimum(i0 + 1, size_in - 1)
    cols = jnp.arange(size_in)
    return ((cols[None] == i0[:, None]) * (1.0 - frac)[:, None]
            + (cols[None] == i1[:, None]) * frac[:, None]).astype(jnp.float32)


def upsample_masks(logits: jax.Array, canvas_hw: tuple[int, int],
                   stride: int = MASK_STRIDE) -> jax.Array:
    """Bilinear (align_corners=False) upsampling of [N, h, w] stride-`stride` logits by the
    stride, cropped to the canvas [N, Hb, Wb] (= torch's `interpolate(size=(Hb, Wb))` when
    Hb = stride * h and Wb = stride * w)."""
    h, w = logits.shape[-2:]
    stride_scale((h, w), canvas_hw, stride)  # checks the sizes
    rows = upsample_matrix(h, stride * h, canvas_hw[0])  # [Hb, h]
    cols = upsample_matrix(w, stride * w, canvas_hw[1])  # [Wb, w]
    x = jnp.einsum("nhw,xw->nhx", logits, cols, precision=_HIGHEST)
    return jnp.einsum("yh,nhx->nyx", rows, x, precision=_HIGHEST)


def masks_full_term(outputs: dict, batch: dict, t: Targets, *, alpha: float = 0.25,
                    gamma: float = 2.0) -> dict[str, jax.Array]:
    """DETR segm's mask losses (facebookresearch/detr `SetCriterion.loss_masks`) on full masks.

    The matched query's logits, upsampled bilinearly to the padded canvas (`upsample_masks`),
    against the ground-truth mask: `loss_mask` [L] the sigmoid focal loss (`alpha`, `gamma`)
    averaged over the Hb * Wb pixels, summed over the pairs, / `num_boxes`; `loss_dice` [L] the
    dice loss over all pixels, summed, / `num_boxes`. Padding pixels count (as the original).
    Memory: one image's [G, Hb, Wb] at a time (`lax.map` over images, rematerialised in the
    backward pass).
    """
    pred, gt, match, weight = _mask_inputs(outputs, batch, t, "masks_full")
    canvas = gt.shape[-2:]

    @jax.checkpoint
    def image(args):
        pred_b, gt_b, weight_b = args  # [G, h, w], [G, Hb, Wb], [G]
        up = upsample_masks(pred_b, canvas).reshape(pred_b.shape[0], -1)
        labels = gt_b.reshape(gt_b.shape[0], -1).astype(jnp.float32)
        focal = jnp.mean(sigmoid_focal_elements(up, labels, alpha, gamma), axis=-1)
        return jnp.sum(weight_b * focal), jnp.sum(weight_b * dice_loss(up, labels))

    def layer(args):
        pred_l, match_l, weight_l = args
        focal, dice = jax.lax.map(image, (_matched(pred_l, match_l), gt, weight_l))
        return jnp.sum(focal), jnp.sum(dice)

    loss_mask, loss_dice = jax.lax.map(layer, (pred, match, weight))
    num_layers = t.match.shape[0]
    return {"loss_mask": _pad_layers(loss_mask, num_layers) / t.num_boxes,
            "loss_dice": _pad_layers(loss_dice, num_layers) / t.num_boxes}


MASK_LOSSES = ("loss_mask", "loss_dice")

__all__ = ["MASK_LOSSES", "dice_loss", "loss_rng", "masks_full_term", "masks_term",
           "sigmoid_bce", "upsample_masks"]
