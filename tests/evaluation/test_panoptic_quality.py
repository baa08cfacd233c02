"""PQ / SQ / RQ against hand-computed cases and a loop-by-loop panopticapi transcription."""

from __future__ import annotations

import numpy as np
import pytest

from detr_jax.evaluation.panoptic_quality import PanopticQuality, image_pq_stats

# category id -> isthing: 1, 2 things, 3 stuff
CATS = {1: True, 2: True, 3: False}


def _strip(*runs, width=None):
    """A [1, W] id map from (first col, last col inclusive, id) runs; VOID (0) elsewhere."""
    width = width or max(r[1] for r in runs) + 1
    ids = np.zeros((1, width), np.int32)
    for first, last, sid in runs:
        ids[0, first:last + 1] = sid
    return ids


def _seg(sid, cat, crowd=0, **kw):
    return dict(id=sid, category_id=cat, iscrowd=crowd, **kw)


def _pq(gt_ids, gt_segs, pred_ids, pred_segs, cats=CATS):
    acc = PanopticQuality(cats)
    acc.add(gt_ids, gt_segs, pred_ids, pred_segs)
    return acc.summarize()


def test_gt_as_prediction_is_perfect():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, (9, 11)).astype(np.int32)  # id 0 pixels are VOID
    segs = [_seg(1, 1), _seg(2, 1), _seg(3, 2), _seg(4, 3)]
    s = _pq(ids, segs, ids, segs)
    for g in ("All", "Things", "Stuff"):
        assert (s[g]["pq"], s[g]["sq"], s[g]["rq"]) == (1.0, 1.0, 1.0)
    assert (s["All"]["n"], s["Things"]["n"], s["Stuff"]["n"]) == (3, 2, 1)
    assert s["per_class"][1]["tp"] == 2


@pytest.mark.parametrize("shift, matched", [(6, True), (7, False)])
def test_shifted_segments_around_iou_half(shift, matched):
    # gt: thing A = cols 0..19, stuff B = cols 20..39. The prediction shifts A right by `shift`
    # and B wraps round: IoU = (20 - s) / (20 + s): 14/26 = 0.538 (s = 6), 13/27 = 0.481 (s = 7).
    gt = _strip((0, 19, 1), (20, 39, 2))
    gt_segs = [_seg(1, 1), _seg(2, 3)]
    pred = _strip((0, shift - 1, 2), (shift, 19 + shift, 1), (20 + shift, 39, 2))
    s = _pq(gt, gt_segs, pred, [_seg(1, 1), _seg(2, 3)])
    if matched:
        iou = 14 / 26
        for g in ("All", "Things", "Stuff"):
            assert s[g]["pq"] == pytest.approx(iou) and s[g]["sq"] == pytest.approx(iou)
            assert s[g]["rq"] == 1.0
    else:
        assert s["All"]["pq"] == s["All"]["sq"] == s["All"]["rq"] == 0.0
        assert (s["per_class"][1]["fp"], s["per_class"][1]["fn"]) == (1, 1)
    assert s["All"]["n"] == 2


def test_iou_of_exactly_half_is_not_a_match():
    # gt cols 0..29 (cat 1) and 30..39 (cat 2), pred cols 10..39 (cat 1): inter 20, union 40.
    gt, pred = _strip((0, 29, 1), (30, 39, 2)), _strip((10, 39, 1))
    c = _pq(gt, [_seg(1, 1), _seg(2, 2)], pred, [_seg(1, 1)])["per_class"][1]
    assert (c["tp"], c["fp"], c["fn"]) == (0, 1, 1)


def test_merged_prediction_matches_the_larger_gt_only():
    # gt A = cols 0..9, B = cols 10..29 (both category 1); one prediction over cols 0..29:
    # IoU with B = 20/30 (tp), with A = 10/30 (A is a fn).
    gt = _strip((0, 9, 1), (10, 29, 2))
    pred = _strip((0, 29, 7))
    s = _pq(gt, [_seg(1, 1), _seg(2, 1)], pred, [_seg(7, 1)])
    c = s["per_class"][1]
    assert (c["tp"], c["fp"], c["fn"]) == (1, 0, 1)
    assert c["pq"] == pytest.approx((2 / 3) / 1.5)
    assert c["sq"] == pytest.approx(2 / 3) and c["rq"] == pytest.approx(2 / 3)
    assert s["All"]["n"] == 1 and s["All"]["pq"] == pytest.approx(4 / 9)


def test_crowd_and_void_regions():
    # gt: cols 0..9 crowd (cat 1), 10..14 VOID, 15..19 thing (cat 2), 20..29 stuff (cat 3).
    gt = _strip((0, 9, 5), (15, 19, 2), (20, 29, 3))
    gt_segs = [_seg(5, 1, crowd=1), _seg(2, 2), _seg(3, 3)]
    pred = _strip(
        (0, 1, 4),    # cat 2 on the cat-1 crowd: the crowd of another class -> fp of cat 2
        (2, 11, 1),   # cat 1: 8 px crowd + 2 px VOID -> ignored, not a fp
        (12, 19, 2),  # cat 2: 3 px VOID + the 5 px gt: IoU 5 / (8 + 5 - 5 - 3) = 1
        (20, 29, 3),
    )
    pred_segs = [_seg(4, 2), _seg(1, 1), _seg(2, 2), _seg(3, 3)]
    s = _pq(gt, gt_segs, pred, pred_segs)
    assert s["per_class"][1] == {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0, "isthing": True,
                                 "pq": 0.0, "sq": 0.0, "rq": 0.0}  # crowd: not a fn either
    c2 = s["per_class"][2]
    assert (c2["tp"], c2["fp"], c2["fn"], c2["iou"]) == (1, 1, 0, 1.0)
    assert c2["pq"] == pytest.approx(2 / 3) and c2["sq"] == 1.0
    assert s["All"]["n"] == 2 and s["All"]["pq"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["Things"]["pq"] == pytest.approx(2 / 3) and s["Stuff"]["pq"] == 1.0


@pytest.mark.parametrize("gt_runs, gt_segs, fp", [
    # 6 of the 10 px on VOID: ignored
    ([(0, 3, 2)], [_seg(2, 2)], 0),
    # 4 of 10 on VOID: a fp
    ([(0, 5, 2)], [_seg(2, 2)], 1),
    # 3 px on a crowd of its own class + 3 px VOID: 6/10, ignored
    ([(0, 2, 4), (6, 9, 2)], [_seg(4, 3, crowd=1), _seg(2, 2)], 0),
    # 3 px crowd + 2 px VOID = exactly half: a fp (ignored only above one half)
    ([(0, 2, 4), (5, 9, 2)], [_seg(4, 3, crowd=1), _seg(2, 2)], 1),
    # 3 px on a crowd of another class + 3 px VOID: 3/10, a fp
    ([(0, 2, 4), (6, 9, 2)], [_seg(4, 1, crowd=1), _seg(2, 2)], 1),
])
def test_unmatched_prediction_over_void_and_crowd(gt_runs, gt_segs, fp):
    # one cat-3 prediction over the whole 1 x 10 strip, matching no gt segment
    gt = _strip(*gt_runs, width=10)
    s = _pq(gt, gt_segs, _strip((0, 9, 9)), [_seg(9, 3)])
    assert s["per_class"][3]["fp"] == fp and s["per_class"][3]["tp"] == 0
    assert s["per_class"][2]["fn"] == 1


def test_void_is_left_out_of_the_union():
    # gt cols 0..3 (cat 1), cols 4..9 VOID; pred over cols 0..9: inter 4, union 10 + 4 - 4 - 6
    gt = _strip((0, 3, 1), width=10)
    c = _pq(gt, [_seg(1, 1)], _strip((0, 9, 3)), [_seg(3, 1)])["per_class"][1]
    assert (c["tp"], c["fp"], c["fn"], c["iou"]) == (1, 0, 0, 1.0)


def test_missing_stuff_and_a_class_absent_from_both():
    gt = _strip((0, 9, 1), (10, 19, 2))
    s = _pq(gt, [_seg(1, 1), _seg(2, 3)], _strip((0, 9, 1), width=20), [_seg(1, 1)])
    assert s["per_class"][3]["fn"] == 1 and s["per_class"][3]["pq"] == 0.0
    assert s["per_class"][2]["pq"] == 0.0  # category 2: absent from both, not averaged
    assert (s["All"]["n"], s["Things"]["n"], s["Stuff"]["n"]) == (2, 1, 1)
    assert s["All"]["pq"] == 0.5 and s["Things"]["pq"] == 1.0 and s["Stuff"]["pq"] == 0.0


def test_gt_area_is_read_from_the_segment_when_given():
    # panopticapi takes the gt area from the JSON: a larger stated area lowers the IoU.
    gt, pred = _strip((0, 9, 1)), _strip((0, 9, 1))
    st = image_pq_stats(gt, [_seg(1, 1, area=15)], pred, [_seg(1, 1)])
    np.testing.assert_allclose(st[1], [10 / 15, 1, 0, 0])


def test_bad_inputs_are_refused():
    ids = _strip((0, 4, 1))
    with pytest.raises(ValueError, match="lacks"):
        image_pq_stats(ids, [_seg(1, 1)], ids, [])
    with pytest.raises(ValueError, match="do not occur"):
        image_pq_stats(ids, [_seg(1, 1)], ids, [_seg(1, 1), _seg(2, 1)])
    with pytest.raises(ValueError, match="unknown category_id"):
        image_pq_stats(ids, [_seg(1, 1)], ids, [_seg(1, 9)], CATS)
    with pytest.raises(ValueError, match="must be equal"):
        image_pq_stats(ids, [], ids[:, :3], [])


# --- an independent reference: panopticapi's pq_compute_single_core + pq_average, written out as
# plain loops over pixels and segments (small images only).


def _reference_pq(images, cats):
    stat = {c: [0.0, 0, 0, 0] for c in cats}  # iou, tp, fp, fn
    for gt_ids, gt_segs, pred_ids, pred_segs in images:
        h, w = gt_ids.shape
        gt_info = {s["id"]: dict(s) for s in gt_segs}
        pred_info = {s["id"]: dict(s) for s in pred_segs}
        pair = {}
        gt_area, pred_area = {}, {}
        for y in range(h):
            for x in range(w):
                g, p = int(gt_ids[y, x]), int(pred_ids[y, x])
                pair[(g, p)] = pair.get((g, p), 0) + 1
                gt_area[g] = gt_area.get(g, 0) + 1
                pred_area[p] = pred_area.get(p, 0) + 1
        for sid, s in gt_info.items():
            s.setdefault("area", gt_area.get(sid, 0))
        for sid, s in pred_info.items():
            s["area"] = pred_area[sid]
        gt_done, pred_done = [], []
        for (g, p), inter in pair.items():
            if g not in gt_info or p not in pred_info:
                continue
            if gt_info[g]["iscrowd"] == 1:
                continue
            if gt_info[g]["category_id"] != pred_info[p]["category_id"]:
                continue
            union = pred_info[p]["area"] + gt_info[g]["area"] - inter - pair.get((0, p), 0)
            if inter / union > 0.5:
                stat[gt_info[g]["category_id"]][0] += inter / union
                stat[gt_info[g]["category_id"]][1] += 1
                gt_done.append(g)
                pred_done.append(p)
        crowd = {}
        for g, s in gt_info.items():
            if g in gt_done:
                continue
            if s["iscrowd"] == 1:
                crowd[s["category_id"]] = g
            else:
                stat[s["category_id"]][3] += 1
        for p, s in pred_info.items():
            if p in pred_done:
                continue
            inter = pair.get((0, p), 0)
            if s["category_id"] in crowd:
                inter += pair.get((crowd[s["category_id"]], p), 0)
            if inter / s["area"] > 0.5:
                continue
            stat[s["category_id"]][2] += 1
    out = {}
    for name, want in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        for c, isthing in cats.items():
            if want is not None and isthing != want:
                continue
            iou, tp, fp, fn = stat[c]
            if tp + fp + fn == 0:
                continue
            n += 1
            pq += iou / (tp + 0.5 * fp + 0.5 * fn)
            sq += iou / tp if tp != 0 else 0
            rq += tp / (tp + 0.5 * fp + 0.5 * fn)
        out[name] = (pq / n, sq / n, rq / n, n) if n else (0.0, 0.0, 0.0, 0)
    return out


def _random_image(rng, cats, h=10, w=13):
    """A gt map of random rectangles (some crowd, some VOID) and a perturbed prediction."""
    cat_list = list(cats)
    gt = np.zeros((h, w), np.int32)
    gt_segs = []
    for sid in range(1, rng.integers(2, 7)):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        gt[y0:y0 + rng.integers(2, 7), x0:x0 + rng.integers(2, 8)] = sid
    present = [int(v) for v in np.unique(gt) if v]
    for sid in present:
        gt_segs.append({"id": sid, "category_id": int(rng.choice(cat_list)),
                        "iscrowd": int(rng.random() < 0.2)})
    pred = np.roll(gt, (int(rng.integers(-1, 2)), int(rng.integers(-2, 3))), axis=(0, 1))
    noise = rng.random((h, w)) < 0.15
    pred[noise] = rng.integers(0, 9, noise.sum())
    if rng.random() < 0.5 and present:  # merge one segment into another id
        pred[pred == present[0]] = present[-1]
    relabel = rng.permutation(20)[:10] + 1  # new ids, 0 stays VOID
    pred = np.where(pred > 0, relabel[np.clip(pred, 0, 9)], 0).astype(np.int32)
    gt_cat = {s["id"]: s["category_id"] for s in gt_segs}
    pred_segs = []
    for pid in (int(v) for v in np.unique(pred) if v):
        back = int(np.flatnonzero(relabel == pid)[0])  # the gt-side id it came from
        cat = gt_cat.get(back, int(rng.choice(cat_list)))
        if rng.random() < 0.15:
            cat = int(rng.choice(cat_list))
        pred_segs.append({"id": pid, "category_id": cat})
    return gt, gt_segs, pred, pred_segs


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_loop_reference_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    cats = {1: True, 2: True, 3: False, 4: False, 5: True}
    images = [_random_image(rng, cats) for _ in range(8)]
    acc = PanopticQuality(cats)
    for im in images:
        acc.add(*im)
    got = acc.summarize()
    want = _reference_pq(images, cats)
    tps = sum(got["per_class"][c]["tp"] for c in cats)
    assert tps > 0 and got["All"]["pq"] < 1  # the random cases do match and do miss
    for g in ("All", "Things", "Stuff"):
        np.testing.assert_allclose(
            [got[g]["pq"], got[g]["sq"], got[g]["rq"], got[g]["n"]], want[g], rtol=1e-12,
            err_msg=g)
