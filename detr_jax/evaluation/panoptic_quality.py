"""Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ).

The definitions of panopticapi's ``pq_compute`` (Kirillov et al., "Panoptic Segmentation"), on
numpy id maps instead of PNG files:

- per image, the ground truth and the prediction are an int id map [H, W] (0 = VOID: unlabelled
  pixels, ignored) and a list of segments ``{"id", "category_id", "iscrowd", "area"?}``;
- the IoU of a (gt, pred) pair leaves the prediction's VOID pixels out of the union:
  ``union = area_pred + area_gt - intersection - |pred ∩ gt VOID|``;
- a pair of the same category with IoU > 0.5 is a true positive (such a match is unique); crowd
  ground-truth segments are never matched;
- unmatched non-crowd gt segments are false negatives; an unmatched prediction is a false
  positive unless more than half of it lies on gt VOID plus the crowd region of its category;
- per category the sums ``iou`` (over true positives), ``tp``, ``fp``, ``fn``; then per category
  ``PQ = iou / (tp + fp/2 + fn/2)``, ``SQ = iou / tp`` (0 without tp), ``RQ = tp / (tp + fp/2 +
  fn/2)``, averaged over the categories that have ``tp + fp + fn > 0``, separately for things,
  stuff and all.

Values are fractions in [0, 1] (panopticapi prints them x100).

Two panopticapi details kept on purpose: a gt segment's ``area`` is the one given in its segment
dict (panopticapi reads it from the JSON; computed from the id map when absent), and only one
crowd region per category is remembered per image (the last crowd segment of that category in the
list), for the false-positive test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

VOID = 0
OFFSET = 256 * 256 * 256  # ids are < 256^3 (RGB-encoded PNGs); gt * OFFSET + pred is unique
GROUPS = ("All", "Things", "Stuff")


def _segment_dict(segments: Sequence[Mapping[str, Any]], what: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for seg in segments:
        sid = int(seg["id"])
        if sid == VOID:
            raise ValueError(f"{what} segments: id 0 is VOID and cannot name a segment")
        if sid in out:
            raise ValueError(f"{what} segments: duplicate id {sid}")
        out[sid] = {
            "category_id": int(seg["category_id"]),
            "iscrowd": int(seg.get("iscrowd", 0)),
            "area": seg.get("area"),
        }
    return out


def image_pq_stats(
    gt_ids: np.ndarray,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_ids: np.ndarray,
    pred_segments: Sequence[Mapping[str, Any]],
    categories: Mapping[int, bool] | None = None,
) -> dict[int, np.ndarray]:
    """One image's per-category statistics, panopticapi's ``pq_compute_single_core``.

    Args:
      gt_ids: int [H, W] ground-truth segment id per pixel, 0 = VOID; ids absent from
        ``gt_segments`` are left out like VOID in matching, but only id 0 is subtracted from unions.
      gt_segments: ``{"id", "category_id", "iscrowd" (default 0), "area" (optional: pixel count of
        the id in ``gt_ids`` when absent)}``.
      pred_ids: int [H, W] predicted segment id per pixel, 0 = VOID.
      pred_segments: ``{"id", "category_id"}``; their areas are always counted in ``pred_ids``.
      categories: optional ``{category_id: isthing}``; when given, a predicted category outside it
        is an error.

    Returns:
      ``{category_id: float64 [4] = (iou sum, tp, fp, fn)}`` for the categories seen.

    Raises ValueError when the maps differ in shape, or a predicted id is in the map but not in the
    segments (or the other way round), as panopticapi does.
    """
    gt_ids = np.asarray(gt_ids)
    pred_ids = np.asarray(pred_ids)
    if gt_ids.ndim != 2 or gt_ids.shape != pred_ids.shape:
        raise ValueError(
            f"gt_ids {gt_ids.shape} and pred_ids {pred_ids.shape} must be equal [H, W]")
    gt_segms = _segment_dict(gt_segments, "gt")
    pred_segms = _segment_dict(pred_segments, "pred")

    labels, counts = np.unique(pred_ids, return_counts=True)
    unseen = set(pred_segms)
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        if label not in pred_segms:
            if label == VOID:
                continue
            raise ValueError(f"pred_ids holds segment id {label}, which pred_segments lacks")
        pred_segms[label]["area"] = count
        unseen.discard(label)
        cat = pred_segms[label]["category_id"]
        if categories is not None and cat not in categories:
            raise ValueError(f"pred segment {label}: unknown category_id {cat}")
    if unseen:
        raise ValueError(f"pred_segments ids {sorted(unseen)} do not occur in pred_ids")
    if any(s["area"] is None for s in gt_segms.values()):
        g_labels, g_counts = np.unique(gt_ids, return_counts=True)
        g_area = dict(zip(g_labels.tolist(), g_counts.tolist(), strict=True))
        for label, seg in gt_segms.items():
            if seg["area"] is None:
                seg["area"] = g_area.get(label, 0)

    joint = gt_ids.astype(np.uint64) * np.uint64(OFFSET) + pred_ids.astype(np.uint64)
    j_labels, j_counts = np.unique(joint, return_counts=True)
    overlap = {
        (int(lab) // OFFSET, int(lab) % OFFSET): int(c)
        for lab, c in zip(j_labels.tolist(), j_counts.tolist(), strict=True)
    }

    stats: dict[int, np.ndarray] = {}

    def stat(cat: int) -> np.ndarray:
        return stats.setdefault(cat, np.zeros(4, np.float64))

    gt_matched, pred_matched = set(), set()
    for (gt_label, pred_label), inter in overlap.items():
        if gt_label not in gt_segms or pred_label not in pred_segms:
            continue
        g, p = gt_segms[gt_label], pred_segms[pred_label]
        if g["iscrowd"] == 1 or g["category_id"] != p["category_id"]:
            continue
        union = p["area"] + g["area"] - inter - overlap.get((VOID, pred_label), 0)
        iou = inter / union
        if iou > 0.5:
            s = stat(g["category_id"])
            s[0] += iou
            s[1] += 1
            gt_matched.add(gt_label)
            pred_matched.add(pred_label)

    crowd_by_cat: dict[int, int] = {}
    for gt_label, g in gt_segms.items():
        if gt_label in gt_matched:
            continue
        if g["iscrowd"] == 1:
            crowd_by_cat[g["category_id"]] = gt_label
            continue
        stat(g["category_id"])[3] += 1

    for pred_label, p in pred_segms.items():
        if pred_label in pred_matched:
            continue
        ignored = overlap.get((VOID, pred_label), 0)
        if p["category_id"] in crowd_by_cat:
            ignored += overlap.get((crowd_by_cat[p["category_id"]], pred_label), 0)
        if ignored / p["area"] > 0.5:
            continue
        stat(p["category_id"])[2] += 1
    return stats


class PanopticQuality:
    """Accumulates :func:`image_pq_stats` over images; ``summarize()`` gives PQ / SQ / RQ.

    Usage::

        pq = PanopticQuality({0: True, 1: True, 2: False})  # {category_id: isthing}
        for gt_ids, gt_segs, pred_ids, pred_segs in images:
            pq.add(gt_ids, gt_segs, pred_ids, pred_segs)
        pq.summarize()["All"]["pq"]

    Category ids are whatever both sides use (contiguous labels inside the package, the dataset's
    ids for COCO files); categories outside ``categories`` are refused in predictions and left out
    of the averages in the ground truth.
    """

    def __init__(self, categories: Mapping[int, bool]) -> None:
        if not categories:
            raise ValueError("categories: need at least one {category_id: isthing}")
        self.categories = {int(k): bool(v) for k, v in categories.items()}
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated images."""
        self.stats = {c: np.zeros(4, np.float64) for c in self.categories}
        self.num_images = 0

    def add(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Add one image (arguments as :func:`image_pq_stats`)."""
        image = image_pq_stats(gt_ids, gt_segments, pred_ids, pred_segments, self.categories)
        for cat, s in image.items():
            self.stats.setdefault(cat, np.zeros(4, np.float64))
            self.stats[cat] += s
        self.num_images += 1

    def summarize(self) -> dict[str, Any]:
        """PQ / SQ / RQ as panopticapi's ``pq_average``.

        Returns:
          ``{"All" | "Things" | "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {category_id:
          {"pq", "sq", "rq", "iou", "tp", "fp", "fn", "isthing"}}}``; ``n`` is the number of
          categories averaged (those with ``tp + fp + fn > 0``); a group with ``n = 0`` reports
          0.0 (panopticapi would divide by zero). Categories without any tp, fp or fn have
          ``pq = sq = rq = 0`` in ``per_class`` and are not averaged.
        """
        per_class: dict[int, dict] = {}
        sums = {g: np.zeros(3) for g in GROUPS}
        counts = dict.fromkeys(GROUPS, 0)
        for cat, isthing in self.categories.items():
            iou, tp, fp, fn = self.stats[cat]
            entry = {"iou": float(iou), "tp": int(tp), "fp": int(fp), "fn": int(fn),
                     "isthing": isthing, "pq": 0.0, "sq": 0.0, "rq": 0.0}
            per_class[cat] = entry
            if tp + fp + fn == 0:
                continue
            denom = tp + 0.5 * fp + 0.5 * fn
            entry["pq"] = float(iou / denom)
            entry["sq"] = float(iou / tp) if tp else 0.0
            entry["rq"] = float(tp / denom)
            for g in ("All", "Things" if isthing else "Stuff"):
                sums[g] += (entry["pq"], entry["sq"], entry["rq"])
                counts[g] += 1
        out: dict[str, Any] = {}
        for g in GROUPS:
            n = counts[g]
            mean = sums[g] / n if n else np.zeros(3)
            out[g] = {"pq": float(mean[0]), "sq": float(mean[1]), "rq": float(mean[2]), "n": n}
        out["per_class"] = per_class
        return out

    def metrics(self) -> dict[str, float]:
        """Flat scalars for logging: ``PQ, SQ, RQ, PQ_th, SQ_th, RQ_th, PQ_st, SQ_st, RQ_st``."""
        s = self.summarize()
        out = {}
        for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            for k in ("pq", "sq", "rq"):
                out[k.upper() + suffix] = s[group][k]
        return out
