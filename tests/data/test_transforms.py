"""DETR transforms on numpy samples: hand-computed boxes and a property test over random chains."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detr_jax.data import transforms as T
from detr_jax.data.batching import collate


def _sample(h=40, w=60, boxes=((10, 5, 30, 25),), labels=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    img = np.arange(h * w * 3, dtype=np.int64).reshape(h, w, 3) % 251
    return {
        "image": img.astype(np.uint8),
        "boxes": boxes,
        "labels": np.arange(len(boxes), dtype=np.int32) if labels is None else labels,
        "image_id": 7,
        "orig_size": np.array([h, w], np.int32),
    }


def test_hflip_boxes_and_pixels():
    s = _sample()
    out = T.hflip(s)
    np.testing.assert_array_equal(out["boxes"], [[30, 5, 50, 25]])  # x: 60-30, 60-10
    np.testing.assert_array_equal(out["image"][:, 0], s["image"][:, -1])
    np.testing.assert_array_equal(T.hflip(out)["boxes"], s["boxes"])
    assert s["boxes"][0, 0] == 10  # input untouched


def test_resized_hw_matches_detr():
    assert T.resized_hw(480, 640, 800, 1333) == (800, 1066)
    assert T.resized_hw(640, 480, 800, 1333) == (1066, 800)
    # 1:2 image, shorter side 800 would give a 1600 long side: size -> round(1333/2) = 666
    assert T.resized_hw(500, 1000, 800, 1333) == (666, 1332)
    assert T.resized_hw(800, 1000, 800, 1333) == (800, 1000)  # already the right size
    assert T.resized_hw(100, 2000, 800, 1333) == (67, 1333)  # the longer side never exceeds


def test_resize_scales_boxes_and_area():
    s = dict(_sample(), area=np.array([400.0], np.float32))
    out = T.resize(s, 80, 1333)  # 40x60 -> 80x120: x2
    assert out["image"].shape == (80, 120, 3)
    np.testing.assert_allclose(out["boxes"], [[20, 10, 60, 50]])
    np.testing.assert_allclose(out["area"], [1600.0])
    assert out["orig_size"].tolist() == [40, 60]


def test_crop_shifts_clips_and_drops_vanished_boxes():
    s = _sample(boxes=[[10, 5, 30, 25], [0, 0, 5, 5], [25, 20, 59, 39]], labels=np.array([4, 5, 6]))
    out = T.crop(s, top=10, left=8, height=20, width=30)
    assert out["image"].shape == (20, 30, 3)
    np.testing.assert_array_equal(out["image"], s["image"][10:30, 8:38])
    # box 0: (10,5,30,25) - (8,10) -> (2,-5,22,15) -> clipped (2,0,22,15)
    # box 1: (0,0,5,5) vanishes; box 2: (17,10,51,29) -> clipped (17,10,30,20)
    np.testing.assert_array_equal(out["boxes"], [[2, 0, 22, 15], [17, 10, 30, 20]])
    assert out["labels"].tolist() == [4, 6]


def test_random_size_crop_range():
    rng = np.random.default_rng(0)
    s = _sample(h=100, w=120, boxes=[[0, 0, 120, 100]])
    for _ in range(20):
        out = T.random_size_crop(s, 30, 50, rng)
        h, w = out["image"].shape[:2]
        assert 30 <= h <= 50 and 30 <= w <= 50
        np.testing.assert_array_equal(out["boxes"], [[0, 0, w, h]])  # the full box is clipped


def test_eval_transform_and_train_sizes():
    cfg = T.TransformConfig()
    assert T.detr_eval_transform(_sample(h=480, w=640), cfg)["image"].shape == (800, 1066, 3)
    rng = np.random.default_rng(1)
    for _ in range(6):
        out = T.detr_train_transform(_sample(h=480, w=640), cfg, rng)
        h, w = out["image"].shape[:2]
        assert min(h, w) in cfg.scales and max(h, w) <= cfg.max_size


def test_normalised_cxcywh_and_imagenet_normalisation_in_collate():
    s = T.resize(_sample(), 80, None)  # box (20,10,60,50) in a 80x120 image
    batch, _ = collate([s], buckets=[(96, 128)], max_boxes=2)
    np.testing.assert_allclose(batch["boxes"][0, 0], [40 / 120, 30 / 80, 40 / 120, 40 / 80])
    px = s["image"][0, 0].astype(np.float32) / 255
    np.testing.assert_allclose(
        batch["image"][0, 0, 0], (px - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], rtol=1e-5)


SMALL = T.TransformConfig(scales=(32, 48, 64), max_size=80, select_scales=(40, 50),
                          crop_min=20, crop_max=40, eval_size=48)


@st.composite
def samples(draw):
    h, w = draw(st.integers(8, 90)), draw(st.integers(8, 90))
    n = draw(st.integers(0, 6))
    xs = draw(st.lists(st.floats(-10, w + 10), min_size=2 * n, max_size=2 * n))
    ys = draw(st.lists(st.floats(-10, h + 10), min_size=2 * n, max_size=2 * n))
    boxes = [[min(xs[2 * i], xs[2 * i + 1]), min(ys[2 * i], ys[2 * i + 1]),
              max(xs[2 * i], xs[2 * i + 1]), max(ys[2 * i], ys[2 * i + 1])] for i in range(n)]
    return _sample(h, w, boxes if n else np.zeros((0, 4)))


@settings(max_examples=60, deadline=None)
@given(samples(), st.integers(0, 2**31 - 1),
       st.lists(st.sampled_from(["flip", "resize", "crop", "train", "eval"]), max_size=4))
def test_any_chain_gives_valid_boxes_inside_unit_square(sample, seed, chain):
    rng = np.random.default_rng(seed)
    for op in chain:
        if op == "flip":
            sample = T.hflip(sample)
        elif op == "resize":
            sample = T.random_resize(sample, SMALL.scales, SMALL.max_size, rng)
        elif op == "crop":
            sample = T.random_size_crop(sample, SMALL.crop_min, SMALL.crop_max, rng)
        elif op == "train":
            sample = T.detr_train_transform(sample, SMALL, rng)
        else:
            sample = T.detr_eval_transform(sample, SMALL)
    assert len(sample["boxes"]) == len(sample["labels"])
    h, w = sample["image"].shape[:2]
    batch, _ = collate([sample], buckets=[(max(h, 96), max(w, 96))], max_boxes=8)
    b, v = batch["boxes"][0], batch["box_valid"][0]
    assert np.all(np.isfinite(b))
    assert np.all(b[v, 2:] > 0)  # positive width and height
    x0, y0 = b[v, 0] - b[v, 2] / 2, b[v, 1] - b[v, 3] / 2
    x1, y1 = b[v, 0] + b[v, 2] / 2, b[v, 1] + b[v, 3] / 2
    eps = 1e-6
    assert np.all(x0 >= -eps) and np.all(y0 >= -eps) and np.all(x1 <= 1 + eps)
    assert np.all(y1 <= 1 + eps)


def test_subpixel_box_is_dropped_at_collate():
    s = _sample(8, 8, [[0, 0, 1e-45, 4], [0, 0, 4, 4]])
    batch, stats = collate([s], buckets=[(8, 8)], max_boxes=4)
    assert batch["box_valid"][0].tolist() == [True, False, False, False]
    assert stats.num_degenerate_boxes == 1


@pytest.mark.parametrize("h,w", [(8, 90), (90, 8), (33, 47)])
def test_crop_bigger_than_image_is_clamped(h, w):
    out = T.random_size_crop(_sample(h, w, [[0, 0, w, h]]), 384, 600, np.random.default_rng(0))
    assert out["image"].shape[:2] == (h, w)
