"""DINO's contrastive denoising (CDN) queries: noised copies of the ground truth (pure, jit-able).

In training, DINO (Zhang et al., 2022) and RT-DETR feed the decoder K groups of noised ground
truth besides the matching queries. Each group holds one positive (small box noise, trained to
reconstruct its object) and one negative (larger noise, trained as "no object") per ground-truth
slot; the loss supervises them by `gt_index` / `positive` without matching.

Layout (RT-DETR's): Q_dn = 2 * G * K denoising queries, G the padded ground-truth slots of the
batch. Group k holds queries 2Gk .. 2G(k+1) - 1: first the positives of slots 0..G-1, then the
negatives of slots 0..G-1. Slots whose ground truth is padding give padding queries (label
`num_classes`, box zeros, `gt_index` -1, never positive), which nobody attends to.

The decoder's full query list is [Q_dn denoising queries, Q matching queries]: the denoising
queries come FIRST (docs/interfaces.md, "Query generator").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid


def num_denoising_groups(dn_number: int, max_objects: int, contrastive: bool = True) -> int:
    """K = max(dn_number // (2 * max_objects), 1): `dn_number` counts queries (positives and
    negatives), so K groups of 2 * max_objects fit in it (at least one group). Without
    negatives (DN-DETR) a group holds max_objects queries: K = dn_number // max_objects."""
    if dn_number < 0:
        raise ValueError(f"dn_number must be >= 0, got {dn_number}")
    per_group = (2 if contrastive else 1) * max(max_objects, 1)
    return max(dn_number // per_group, 1)


def noise_boxes(
    rng: jax.Array, boxes: jax.Array, negative: jax.Array, box_noise_scale: float = 1.0
) -> jax.Array:
    """DINO's box noise on the corners, before clipping.

    Args:
      rng: PRNG key.
      boxes: float32 [..., 4] normalised cxcywh.
      negative: bool [...] (broadcastable to `boxes.shape[:-1]`): negatives move each corner
        coordinate by r * diff with r ~ U[1, 2), positives with r ~ U[0, 1).
      box_noise_scale: scales diff = [w/2, h/2, w/2, h/2].

    Returns:
      float32 [..., 4] xyxy corners + sign * r * diff, a random sign per coordinate; not clipped
      (negatives may come out inverted, x0 > x1, as in DINO / RT-DETR).
    """
    boxes = boxes.astype(jnp.float32)
    half = boxes[..., 2:] * 0.5
    diff = jnp.concatenate([half, half], axis=-1) * box_noise_scale
    k_sign, k_mag = jax.random.split(rng)
    sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, boxes.shape), 1.0, -1.0)
    negative = jnp.broadcast_to(negative, boxes.shape[:-1])
    magnitude = jax.random.uniform(k_mag, boxes.shape) + negative[..., None].astype(jnp.float32)
    return box_cxcywh_to_xyxy(boxes) + sign * magnitude * diff


def contrastive_denoising(
    rng: jax.Array,
    labels: jax.Array,
    boxes: jax.Array,
    box_valid: jax.Array,
    *,
    num_classes: int,
    dn_number: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    max_objects: int | None = None,
    contrastive: bool = True,
) -> dict[str, Any]:
    """Builds K contrastive denoising groups from the (padded) ground truth.

    Args:
      rng: PRNG key (the label and box noise).
      labels: int [B, G] contiguous labels in [0, num_classes); any value where invalid.
      boxes: float32 [B, G, 4] normalised cxcywh; any finite value where invalid.
      box_valid: bool [B, G], False on padding slots.
      num_classes: C (static); padding queries get label C ("no object").
      dn_number: the denoising query budget (static), see `num_denoising_groups`.
      label_noise_ratio: each real query's label is replaced by a uniform class in [0, C) with
        probability label_noise_ratio * 0.5 (the new class may equal the old one).
      box_noise_scale: scale of the box noise (0: unnoised copies), see `noise_boxes`.
      max_objects: the object count K is sized for (static; default G). Only K depends on it:
        each group always has 2 * G slots.
      contrastive: False gives DN-DETR's groups of positives only (G slots per group, box
        noise r ~ U[0, 1)).

    Returns:
      dict with, for Q_dn = 2 * G * K (G * K without `contrastive`):
      - `labels` int32 [B, Q_dn]: noised labels (negatives keep theirs; the loss reads
        `positive`), C on padding;
      - `boxes` float32 [B, Q_dn, 4]: noised boxes, normalised cxcywh in [0, 1] (corners clipped
        to [0, 1]; an inverted negative gets width / height 0), zeros on padding;
      - `reference_logits` float32 [B, Q_dn, 4]: inverse_sigmoid(boxes), a decoder's initial
        reference (finite everywhere, also on padding and degenerate boxes);
      - `positive` bool [B, Q_dn]: real positives; `valid` bool [B, Q_dn]: real queries;
      - `gt_index` int32 [B, Q_dn]: the slot g each query reconstructs, -1 on padding;
      - `num_groups` K and `num_dn` Q_dn: Python ints.
    """
    bsz, num_slots = labels.shape
    if max_objects is None:
        max_objects = num_slots
    num_groups = num_denoising_groups(dn_number, max_objects, contrastive)
    per_group = (2 if contrastive else 1) * num_slots
    num_dn = per_group * num_groups
    # Static layout: query j is slot j % G of group j // 2G, negative in the second half.
    within = np.arange(num_dn) % max(per_group, 1)
    slot = within % max(num_slots, 1)
    negative = jnp.asarray(within >= num_slots)

    valid = box_valid.astype(bool)[:, slot]
    gt_labels = labels.astype(jnp.int32)[:, slot]
    gt_boxes = boxes.astype(jnp.float32)[:, slot]

    k_flip, k_class, k_box = jax.random.split(rng, 3)
    flip = jax.random.uniform(k_flip, (bsz, num_dn)) < label_noise_ratio * 0.5
    new_class = jax.random.randint(k_class, (bsz, num_dn), 0, num_classes, dtype=jnp.int32)
    noised_labels = jnp.where(flip, new_class, gt_labels)
    noised_labels = jnp.where(valid, noised_labels, num_classes).astype(jnp.int32)

    corners = jnp.clip(noise_boxes(k_box, gt_boxes, negative, box_noise_scale), 0.0, 1.0)
    noised_boxes = jnp.clip(box_xyxy_to_cxcywh(corners), 0.0, 1.0)
    noised_boxes = jnp.where(valid[..., None], noised_boxes, 0.0)

    gt_index = jnp.where(valid, jnp.asarray(slot, jnp.int32)[None], -1)
    return {
        "labels": noised_labels,
        "boxes": noised_boxes,
        "reference_logits": inverse_sigmoid(noised_boxes),
        "positive": valid & ~negative[None],
        "gt_index": gt_index,
        "valid": valid,
        "num_groups": num_groups,
        "num_dn": num_dn,
    }


def denoising_attn_mask(
    num_dn: int, num_groups: int, num_queries: int, dn_valid: jax.Array | None = None,
    match_groups: int = 1,
) -> jax.Array:
    """Decoder self-attention mask for [Q_dn denoising queries, Q matching queries].

    True = query i (row) may attend to query j (column). Matching queries see only matching
    queries (no leak of the ground truth); a denoising query sees its own group of Q_dn / K and
    all matching queries. With `dn_valid`, padding denoising queries are hidden from everyone
    (their own group included) but still see themselves, so no row is fully masked.

    (HF RT-DETR builds the same pattern as an additive float mask, 0 = attend, -inf = masked,
    and older versions as bool True = masked: ours is `hf == 0`, resp. `~hf`; HF does not hide
    padding queries.)

    Args:
      num_dn: Q_dn (static), a multiple of num_groups.
      num_groups: K (static).
      num_queries: Q matching queries (static).
      dn_valid: optional bool [B, Q_dn] (`contrastive_denoising(...)["valid"]`).
      match_groups: Group DETR groups among the matching queries (static, divides Q): a
        matching query sees only its own group of Q / match_groups.

    Returns:
      bool [1, Q_dn + Q, Q_dn + Q], or [B, Q_dn + Q, Q_dn + Q] with `dn_valid`.
    """
    if num_groups < 1 or num_dn % num_groups:
        raise ValueError(f"num_dn={num_dn} is not a multiple of num_groups={num_groups}")
    total = num_dn + num_queries
    idx = np.arange(total)
    is_dn = idx < num_dn
    if match_groups < 1 or num_queries % match_groups:
        raise ValueError(f"num_queries={num_queries} is not a multiple of "
                         f"match_groups={match_groups}")
    group = np.where(is_dn, idx // max(num_dn // num_groups, 1), -1)
    same_group = is_dn[:, None] & (group[:, None] == group[None, :])
    match_group = np.where(is_dn, -1, (idx - num_dn) // max(num_queries // match_groups, 1))
    same_match = ~is_dn[:, None] & (match_group[:, None] == match_group[None, :])
    mask = jnp.asarray(same_group | (is_dn[:, None] & ~is_dn[None, :]) | same_match)[None]
    if dn_valid is not None:
        bsz = dn_valid.shape[0]
        key_ok = jnp.concatenate(
            [dn_valid.astype(bool), jnp.ones((bsz, num_queries), bool)], axis=1
        )
        mask = mask & (key_ok[:, None, :] | jnp.eye(total, dtype=bool)[None])
    return mask
