"""Masks through the DETR transforms and the augmentations: aligned with the image and boxes.

Alignment is checked against the pixels themselves: the image is the mask painted white on
black, so after any chain of transforms the (bilinear) image and the (nearest) mask must agree
away from the edges; resizing is compared with torch's ``nearest-exact``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detr_jax.data import augment as A
from detr_jax.data import transforms as T


def _painted(h=40, w=60, rects=((10, 5, 30, 25), (35, 20, 55, 38)), labels=None):
    """Sample whose image paints each object's mask at 255 in the colour channel of its label
    (labels 0..2), black elsewhere."""
    labels = np.arange(len(rects)) if labels is None else np.asarray(labels)
    masks = np.zeros((len(rects), h, w), bool)
    image = np.zeros((h, w, 3), np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(rects):
        masks[k, y0:y1, x0:x1] = True
        image[masks[k], labels[k]] = 255
    return {"image": image, "boxes": np.asarray(rects, np.float32), "masks": masks,
            "labels": labels.astype(np.int32), "is_thing": np.ones(len(rects), bool),
            "iscrowd": np.zeros(len(rects), bool), "image_id": 3,
            "orig_size": np.array([h, w], np.int32)}


def _assert_aligned(s: dict, min_iou: float = 0.85) -> None:
    """Every mask (of 30 pixels or more) overlaps the pixels painted in its channel (> 127:
    where the bilinear image is more object than not) with IoU >= ``min_iou``."""
    assert s["masks"].shape == (len(s["boxes"]),) + s["image"].shape[:2]
    assert s["masks"].dtype == bool
    assert len(s["labels"]) == len(s["boxes"]) == len(s["is_thing"])
    for k, m in enumerate(s["masks"]):
        assert m.any()
        if m.sum() < 30:
            continue
        painted = s["image"][..., int(s["labels"][k])] > 127
        iou = (m & painted).sum() / (m | painted).sum()
        assert iou >= min_iou, (k, iou)


def test_hflip_mirrors_masks():
    s = _painted()
    out = T.hflip(s)
    np.testing.assert_array_equal(out["masks"], s["masks"][:, :, ::-1])
    ys, xs = np.nonzero(out["masks"][0])
    np.testing.assert_array_equal(out["boxes"][0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert s["masks"][0, 5, 10]  # input untouched


def test_resize_masks_is_torch_nearest_exact():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(2, 50, 2))
        nh, nw = (int(v) for v in rng.integers(2, 90, 2))
        m = rng.random((3, h, w)) < 0.5
        ours = T.resize_masks(m, nh, nw)
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(m[:, None].astype(np.float32)), size=(nh, nw),
            mode="nearest-exact")[:, 0].numpy() > 0.5
        # At an exact tie (an output centre on an input pixel border) torch's float32 rounding
        # picks either side; elsewhere the two must agree.
        tie_y = (2 * np.arange(nh) + 1) * h % (2 * nh) == 0
        tie_x = (2 * np.arange(nw) + 1) * w % (2 * nw) == 0
        ok = ~tie_y[:, None] & ~tie_x[None, :]
        assert ours.dtype == bool and ours.shape == (3, nh, nw)
        np.testing.assert_array_equal(ours[:, ok], ref[:, ok])


def test_resize_keeps_masks_aligned():
    s = _painted()
    out = T.resize(s, 80, 1333)  # x2
    assert out["masks"].shape == (2, 80, 120)
    np.testing.assert_array_equal(out["masks"][0], np.kron(s["masks"][0], np.ones((2, 2), bool)))
    _assert_aligned(out)
    _assert_aligned(T.resize(s, 27, 1333))


def test_crop_slices_masks_and_drops_targets_with_empty_mask():
    s = _painted()
    # An L-shaped object: its box reaches into the window, its pixels do not.
    ell = np.zeros((40, 60), bool)
    ell[0:4, 0:40] = True
    ell[0:30, 0:4] = True
    s = dict(s, masks=np.concatenate([s["masks"], ell[None]]),
             boxes=np.concatenate([s["boxes"], [[0, 0, 40, 30]]]).astype(np.float32),
             labels=np.array([0, 1, 2], np.int32), is_thing=np.array([1, 1, 0], bool),
             iscrowd=np.zeros(3, bool))
    out = T.crop(s, top=10, left=8, height=25, width=30)
    np.testing.assert_array_equal(out["masks"], s["masks"][:2, 10:35, 8:38])
    assert out["labels"].tolist() == [0, 1] and out["is_thing"].tolist() == [True, True]
    np.testing.assert_array_equal(out["boxes"], [[2, 0, 22, 15], [27, 10, 30, 25]])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_any_train_chain_keeps_masks_aligned(seed):
    cfg = T.TransformConfig(scales=(40, 56, 72), max_size=96, select_scales=(40, 48),
                            crop_min=20, crop_max=40)
    s = dict(_painted(), panoptic={"ids": np.ones((40, 60), np.int32), "segments": []})
    out = T.detr_train_transform(s, cfg, np.random.default_rng(seed))
    _assert_aligned(out)
    assert out["panoptic"] is s["panoptic"]  # the original image's ground truth, untouched


@pytest.mark.parametrize("op", A.GEOMETRIC_OPS)
def test_geometric_ops_move_masks_with_the_image(op):
    s = _painted(64, 64, ((10, 8, 40, 30), (36, 34, 60, 60)))
    out = A._geometric(s, op, 0.5, np.random.default_rng(1))
    _assert_aligned(out)
    # The box still encloses its mask.
    for b, m in zip(out["boxes"], out["masks"], strict=True):
        ys, xs = np.nonzero(m)
        assert b[0] <= xs.min() + 1 and b[1] <= ys.min() + 1
        assert b[2] >= xs.max() and b[3] >= ys.max()


def test_geometric_op_drops_a_target_pushed_out():
    s = _painted(64, 64, ((56, 0, 64, 8),))  # at the right edge; translate_x moves 19 px
    dropped = 0
    for seed in range(10):
        out = A._geometric(s, "translate_x", 1.0, np.random.default_rng(seed))
        if len(out["boxes"]) == 0:
            dropped += 1
            assert out["masks"].shape == (0, 64, 64) and out["labels"].shape == (0,)
        else:
            _assert_aligned(out)
    assert 0 < dropped < 10


def test_mixup_keeps_both_mask_sets():
    a = _painted(40, 60)
    b = _painted(20, 30, ((0, 0, 10, 10),))
    out = A.mixup(a, b, np.random.default_rng(0))
    assert out["masks"].shape == (3, 40, 60) and out["labels"].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(out["masks"][:2], a["masks"])
    np.testing.assert_array_equal(out["masks"][2], np.kron(b["masks"][0], np.ones((2, 2), bool)))
    assert out["is_thing"].tolist() == [True] * 3 and out["iscrowd"].tolist() == [False] * 3


def test_cutmix_cuts_masks_at_the_pasted_rectangle():
    a = _painted(40, 60, ((0, 0, 60, 40),))  # one object (label 0) covering the image
    b = _painted(40, 60, ((0, 0, 60, 40),), labels=[1])
    n_cut = 0
    for seed in range(20):
        out = A.cutmix(a, b, np.random.default_rng(seed), max_covered=1.0)
        rect = (out["image"] != a["image"]).any(axis=2)  # the pasted pixels
        if not rect.any():
            continue
        n_cut += 1
        for m, label in zip(out["masks"], out["labels"], strict=True):
            np.testing.assert_array_equal(m, rect if label == 1 else ~rect)
        assert 1 in out["labels"].tolist()
        _assert_aligned(out, min_iou=1.0)
    assert n_cut > 10


def test_random_erasing_clears_the_erased_rectangle():
    s = dict(_painted(40, 60, ((0, 0, 60, 40),)), image=np.zeros((40, 60, 3), np.uint8),
             masks=np.ones((1, 40, 60), bool))
    out = A.random_erasing(s, np.random.default_rng(5), max_covered=1.0)
    changed = out["image"].any(axis=2)
    ys, xs = np.nonzero(changed)
    rect = np.zeros((40, 60), bool)
    rect[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
    np.testing.assert_array_equal(out["masks"][0], ~rect)


def test_mixup_of_samples_with_and_without_masks_is_refused():
    a = _painted()
    b = {k: v for k, v in _painted().items() if k != "masks"}
    with pytest.raises(ValueError, match="with masks and one without"):
        A.mixup(a, b, np.random.default_rng(0))
