"""Mask postprocessors: instance masks (``segm``) and panoptic segmentation (``panoptic``).

Inputs are the last decoder layer's ``pred_logits`` ([B, Q, C+1] softmax with "no object" last,
or [B, Q, C] sigmoid), ``pred_boxes`` [B, Q, 4] normalised cxcywh and ``pred_masks`` [B, Q, h, w]
mask logits at stride 4 of the padded canvas [H, W] (h = ceil(H / 4)), plus the batch's
``pixel_mask`` bool [B, H, W] (True on the real, unpadded pixels at the top left).

The jitted parts work at a static resolution, the padded input canvas at stride 1: mask logits
are upsampled bilinearly by the stride (half-pixel centres, as PyTorch's ``align_corners=False``)
and cropped to [H, W]. Going to each image's original size is host-side numpy, because original
sizes differ from image to image: :func:`masks_to_original` (instances) and
:func:`panoptic_segments` (panoptic).

``segm`` follows DETR's ``PostProcessSegm`` (the bbox postprocessor's detections, their masks) or,
with ``mode="pairs"``, Mask2Former's instance inference (top-K over query x class pairs), with
Mask2Former's optional mask score. ``panoptic`` follows MaskFormer / Mask2Former's
``panoptic_inference``; one difference: the per-pixel argmax is taken at the input resolution
and the id map is then resized (nearest) to the original size, where Mask2Former resizes the
mask logits to the original size first and takes the argmax there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.evaluation.mask_resize import resize_bilinear, resize_nearest
from detr_jax.evaluation.postprocess import _to_pixels
from detr_jax.ops.mask_ops import real_image_size

MODES = ("query", "pairs")
ACTIVATIONS = ("softmax", "sigmoid")


def real_size(pixel_mask: jax.Array) -> jax.Array:
    """bool [B, H, W] (real pixels at the top left) -> int32 [B, 2] (h, w) unpadded size."""
    return real_image_size(pixel_mask).astype(jnp.int32)


def upsample_mask_logits(
    pred_masks: jax.Array, canvas: tuple[int, int], stride: int = 4
) -> jax.Array:
    """float [B, Q, h, w] at ``stride`` -> float32 [B, Q, H, W] on the canvas ``(H, W)``.

    Bilinear to (stride h, stride w), then cropped to (H, W): each low-resolution pixel keeps
    covering its stride x stride block of the canvas.
    """
    b, q, h, w = pred_masks.shape
    height, width = canvas
    if h * stride < height or w * stride < width:
        raise ValueError(f"pred_masks {(h, w)} at stride {stride} do not cover the canvas "
                         f"{(height, width)}")
    x = pred_masks.astype(jnp.float32)
    if stride != 1:
        x = jax.image.resize(x, (b, q, h * stride, w * stride), "bilinear")
    return x[:, :, :height, :width]


def _check(pred_logits: jax.Array, pred_masks: jax.Array, pixel_mask: jax.Array,
           activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if pred_masks.ndim != 4 or pred_masks.shape[:2] != pred_logits.shape[:2]:
        raise ValueError(f"pred_masks must be [B, Q, h, w] with pred_logits' [B, Q] "
                         f"{pred_logits.shape[:2]}, got {pred_masks.shape}")
    if pixel_mask.ndim != 3 or pixel_mask.shape[0] != pred_logits.shape[0]:
        raise ValueError(f"pixel_mask must be [B, H, W], got {pixel_mask.shape}")


def class_probabilities(pred_logits: jax.Array, activation: str = "softmax") -> jax.Array:
    """Object-class probabilities float32 [B, Q, C]: softmax over C+1 without the last
    ("no object") column, or a sigmoid per class."""
    x = pred_logits.astype(jnp.float32)
    if activation == "softmax":
        return jax.nn.softmax(x, axis=-1)[..., :-1]
    return jax.nn.sigmoid(x)


def select_detections(
    probs: jax.Array, pred_boxes: jax.Array, orig_size: jax.Array, top_k: int, mode: str
) -> dict[str, jax.Array]:
    """Top-K detections from class probabilities [B, Q, C].

    ``mode="query"``: each query's best class, the K = min(top_k, Q) best queries (the softmax
    ``bbox`` postprocessor's choice). ``mode="pairs"``: the K = min(top_k, Q*C) best (query,
    class) pairs, flat index i = q*C + c (the sigmoid ``bbox`` postprocessor's and Mask2Former's
    instance choice). Returns ``scores`` [B, K] (descending), ``labels`` int32 [B, K], ``queries``
    int32 [B, K] and ``boxes`` [B, K, 4] xyxy pixels of ``orig_size`` [B, 2] (h, w).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    bsz, num_q, num_c = probs.shape
    if mode == "query":
        k = min(int(top_k), num_q)
        scores, queries = jax.lax.top_k(jnp.max(probs, axis=-1), k)
        labels = jnp.take_along_axis(jnp.argmax(probs, axis=-1), queries, axis=-1)
    else:
        k = min(int(top_k), num_q * num_c)
        scores, flat = jax.lax.top_k(probs.reshape(bsz, num_q * num_c), k)
        queries, labels = flat // num_c, flat % num_c
    boxes = jnp.take_along_axis(pred_boxes.astype(jnp.float32), queries[..., None], axis=1)
    return {"scores": scores, "labels": labels.astype(jnp.int32),
            "queries": queries.astype(jnp.int32), "boxes": _to_pixels(boxes, orig_size)}


def postprocess_segm(
    pred_logits: jax.Array,
    pred_boxes: jax.Array,
    orig_size: jax.Array,
    top_k: int,
    *,
    pred_masks: jax.Array,
    pixel_mask: jax.Array,
    mode: str = "query",
    mask_score: bool = False,
    activation: str = "softmax",
    mask_stride: int = 4,
) -> dict[str, jax.Array]:
    """Instance masks of the top-K detections (jit-able; static shapes).

    Args:
      pred_logits, pred_boxes, orig_size, top_k: as the ``bbox`` postprocessors.
      pred_masks: float [B, Q, h, w] mask logits at ``mask_stride`` of the padded canvas.
      pixel_mask: bool [B, H, W], True on real pixels.
      mode: ``"query"`` or ``"pairs"`` (:func:`select_detections`).
      mask_score: multiply each score by the mean mask probability inside its mask (probability
        > 0.5), as Mask2Former, and re-sort.
      activation: ``"softmax"`` (logits [B, Q, C+1]) or ``"sigmoid"`` ([B, Q, C]).
      mask_stride: the stride of ``pred_masks`` on the canvas (4 by the model contract).

    Returns:
      :func:`select_detections`' keys (``scores`` [B, K] descending, ``labels``, ``queries``,
      ``boxes``), ``masks`` float32 [B, K, H, W] mask probabilities on the padded canvas at
      stride 1 (0 on padding) and ``size`` int32 [B, 2] (h, w) of the real pixels. Get the
      binary masks of the original image with :func:`masks_to_original`.
    """
    _check(pred_logits, pred_masks, pixel_mask, activation)
    det = select_detections(class_probabilities(pred_logits, activation), pred_boxes, orig_size,
                            top_k, mode)
    chosen = pred_masks[jnp.arange(pred_masks.shape[0])[:, None], det["queries"]]  # [B, K, h, w]
    masks = jax.nn.sigmoid(upsample_mask_logits(chosen, pixel_mask.shape[1:], mask_stride))
    masks = masks * pixel_mask[:, None].astype(masks.dtype)
    if mask_score:
        binary = (masks > 0.5).astype(masks.dtype)
        mean_prob = jnp.sum(masks * binary, axis=(2, 3)) / (jnp.sum(binary, axis=(2, 3)) + 1e-6)
        scores, order = jax.lax.top_k(det["scores"] * mean_prob, det["scores"].shape[1])
        det = {k: jnp.take_along_axis(v, order.reshape(order.shape + (1,) * (v.ndim - 2)),
                                      axis=1) for k, v in det.items()}
        det["scores"] = scores
        masks = jnp.take_along_axis(masks, order[:, :, None, None], axis=1)
    return dict(det, masks=masks, size=real_size(pixel_mask))


def masks_to_original(
    masks: np.ndarray, size: Sequence[int], orig_size: Sequence[int], threshold: float = 0.5
) -> np.ndarray:
    """Host side: canvas probabilities float [K, H, W] -> bool [K, H0, W0] of the original image.

    Crops the real pixels ``size`` (h, w), resizes bilinearly (PyTorch ``align_corners=False``)
    to ``orig_size`` (H0, W0) and keeps probabilities > ``threshold``.
    """
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected [K, H, W], got shape {masks.shape}")
    h, w = (int(v) for v in np.asarray(size).reshape(2))
    orig = tuple(int(v) for v in np.asarray(orig_size).reshape(2))
    masks = masks[:, :h, :w]
    if masks.shape[0] == 0:
        return np.zeros((0, *orig), bool)
    if (h, w) != orig:
        masks = resize_bilinear(masks, orig)
    return masks > threshold


def postprocess_panoptic(
    pred_logits: jax.Array,
    pred_boxes: jax.Array,
    orig_size: jax.Array,
    top_k: int,
    *,
    pred_masks: jax.Array,
    pixel_mask: jax.Array,
    object_mask_threshold: float = 0.8,
    activation: str = "softmax",
    mask_stride: int = 4,
) -> dict[str, jax.Array]:
    """The dense (jit-able) part of MaskFormer's panoptic inference, on the padded canvas.

    A query is kept when its best class is an object class (softmax: the argmax over all C+1
    columns is not "no object"; sigmoid: always) and that class's probability is >
    ``object_mask_threshold``. Each real pixel goes to the kept query with the largest
    ``score * sigmoid(mask)`` (``pred_boxes``, ``orig_size`` and ``top_k`` are unused: every
    query takes part). :func:`panoptic_segments` then does the segment bookkeeping on the host.

    Returns:
      ``scores`` float32 [B, Q] (best object-class probability), ``labels`` int32 [B, Q],
      ``keep`` bool [B, Q]; ``query_map`` int32 [B, H, W]: the winning query where its mask
      probability is >= 0.5, else -1 (also on padding and without kept queries);
      ``winner_area`` int32 [B, Q] (real pixels a kept query wins), ``mask_area`` (its pixels
      with probability >= 0.5), ``painted_area`` (both), ``size`` int32 [B, 2] (h, w).
    """
    del pred_boxes, orig_size, top_k
    _check(pred_logits, pred_masks, pixel_mask, activation)
    probs = class_probabilities(pred_logits, activation)
    scores, labels = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1).astype(jnp.int32)
    keep = scores > object_mask_threshold
    if activation == "softmax":
        num_c = pred_logits.shape[-1] - 1
        keep &= jnp.argmax(pred_logits.astype(jnp.float32), axis=-1) != num_c
    prob = jax.nn.sigmoid(upsample_mask_logits(pred_masks, pixel_mask.shape[1:], mask_stride))
    weighted = jnp.where(keep[..., None, None], scores[..., None, None] * prob, -1.0)
    winner = jnp.argmax(weighted, axis=1).astype(jnp.int32)  # [B, H, W]
    queries = jnp.arange(prob.shape[1], dtype=jnp.int32)[None, :, None, None]
    valid = pixel_mask[:, None]
    won = (winner[:, None] == queries) & valid & keep[..., None, None]  # [B, Q, H, W]
    high = prob >= 0.5
    painted = won & high
    area = lambda m: jnp.sum(m, axis=(2, 3), dtype=jnp.int32)
    return {
        "scores": scores,
        "labels": labels,
        "keep": keep,
        "query_map": jnp.where(jnp.any(painted, axis=1), winner, -1),
        "winner_area": area(won),
        "mask_area": area(high & valid),
        "painted_area": area(painted),
        "size": real_size(pixel_mask),
    }


def panoptic_segments(
    dense: Mapping[str, Any],
    orig_size: Sequence[int],
    is_thing: Sequence[bool],
    overlap_threshold: float = 0.8,
) -> dict[str, Any]:
    """Host side: one image's :func:`postprocess_panoptic` output (numpy, no batch axis) ->
    its panoptic segmentation at ``orig_size`` (H0, W0).

    Kept queries, in query order, become segments when they win some pixels, have some pixels
    with mask probability >= 0.5, paint some, and ``winner_area / mask_area >=
    overlap_threshold``; a stuff query (``is_thing[label]`` False) joins the segment of an earlier
    stuff query of its class, things get their own ids (1, 2, ... in order). The map is cropped
    to ``size`` and resized (nearest) to ``orig_size``.

    Returns:
      ``ids`` int32 [H0, W0] (0 = VOID) and ``segments`` [{``id``, ``category_id`` (contiguous
      label), ``isthing``, ``score`` (the best score among the segment's queries), ``area``
      (pixels in ``ids``)}]; segments with no pixel left after the resize are dropped.
    """
    keep = np.asarray(dense["keep"], bool)
    labels = np.asarray(dense["labels"])
    scores = np.asarray(dense["scores"], np.float64)
    won, high = np.asarray(dense["winner_area"]), np.asarray(dense["mask_area"])
    painted = np.asarray(dense["painted_area"])
    lut = np.zeros(keep.shape[0] + 1, np.int32)  # query q -> segment id at q + 1; -1 -> VOID
    segments: list[dict] = []
    stuff_id: dict[int, int] = {}
    for q in np.flatnonzero(keep):
        if won[q] == 0 or high[q] == 0 or painted[q] == 0 or won[q] / high[q] < overlap_threshold:
            continue
        label = int(labels[q])
        if not 0 <= label < len(is_thing):
            raise ValueError(f"is_thing has {len(is_thing)} entries; query {q} has label {label}")
        thing = bool(is_thing[label])
        if not thing and label in stuff_id:
            sid = stuff_id[label]
            segments[sid - 1]["score"] = max(segments[sid - 1]["score"], float(scores[q]))
        else:
            sid = len(segments) + 1
            segments.append({"id": sid, "category_id": label, "isthing": thing,
                             "score": float(scores[q])})
            if not thing:
                stuff_id[label] = sid
        lut[q + 1] = sid
    h, w = (int(v) for v in np.asarray(dense["size"]).reshape(2))
    orig = tuple(int(v) for v in np.asarray(orig_size).reshape(2))
    ids = lut[np.asarray(dense["query_map"])[:h, :w] + 1]
    if (h, w) != orig:
        ids = resize_nearest(ids, orig)
    areas = np.bincount(ids.ravel(), minlength=len(segments) + 1)
    segments = [dict(s, area=int(areas[s["id"]])) for s in segments if areas[s["id"]] > 0]
    return {"ids": ids.astype(np.int32), "segments": segments}


def panoptic_batch(
    dense: Mapping[str, Any],
    orig_size: np.ndarray,
    is_thing: Sequence[bool],
    overlap_threshold: float = 0.8,
    image_valid: np.ndarray | None = None,
) -> list[dict[str, Any] | None]:
    """:func:`panoptic_segments` for each image of a batch (``dense`` arrays [B, ...] on the
    host, ``orig_size`` [B, 2]); None for images with ``image_valid`` False (fillers)."""
    dense = {k: np.asarray(v) for k, v in dense.items()}
    orig_size = np.asarray(orig_size).reshape(-1, 2)
    out: list[dict[str, Any] | None] = []
    for i in range(orig_size.shape[0]):
        if image_valid is not None and not bool(np.asarray(image_valid)[i]):
            out.append(None)
            continue
        one = {k: v[i] for k, v in dense.items()}
        out.append(panoptic_segments(one, orig_size[i], is_thing, overlap_threshold))
    return out
