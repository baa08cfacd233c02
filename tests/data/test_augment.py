"""Box-aware augmentations: pixels and boxes move together; covered boxes are dropped."""

from __future__ import annotations

import os

import numpy as np
import pytest

from detr_jax.config_base import base_config
from detr_jax.data import augment as A


def _square_sample(h=60, w=80, box=(20, 15, 40, 35)):
    img = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = 255
    return {"image": img, "boxes": np.array([box], np.float32),
            "labels": np.array([3], np.int32), "image_id": 1,
            "orig_size": np.array([h, w], np.int32)}


def _white_bbox(img):
    ys, xs = np.nonzero(img[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_affine_boxes_by_hand():
    m = np.array([[1, 0, 10], [0, 1, -5]], np.float32)  # translate (+10, -5)
    b, keep = A.affine_boxes(np.array([[0, 0, 10, 10], [75, 0, 80, 4]], np.float32), m, 60, 80)
    np.testing.assert_allclose(b, [[10, 0, 20, 5], [80, 0, 80, 0]])
    assert keep.tolist() == [True, False]  # the second one left the image


@pytest.mark.parametrize("op", A.GEOMETRIC_OPS)
@pytest.mark.parametrize("seed", [0, 1])
def test_geometric_ops_move_pixels_and_boxes_together(op, seed):
    s = _square_sample()
    out = A._geometric(s, op, 0.5, np.random.default_rng(seed))
    assert out["image"].shape == s["image"].shape
    assert len(out["boxes"]) == 1 and out["labels"].tolist() == [3]
    np.testing.assert_allclose(out["boxes"][0], _white_bbox(out["image"]), atol=2.0)


def test_rand_augment_keeps_targets_valid():
    rng = np.random.default_rng(0)
    for _ in range(30):
        out = A.rand_augment(_square_sample(), rng, num_ops=2, magnitude=9)
        b = out["boxes"]
        assert out["image"].dtype == np.uint8 and out["image"].shape == (60, 80, 3)
        assert len(b) == len(out["labels"])
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert np.all(b >= 0) and np.all(b[:, [0, 2]] <= 80) and np.all(b[:, [1, 3]] <= 60)


def test_mixup_blends_and_unions_targets():
    a = _square_sample()
    b = _square_sample(h=30, w=40, box=(0, 0, 10, 10))  # resized x2 onto a
    b["labels"] = np.array([5], np.int32)
    out = A.mixup(a, b, np.random.default_rng(0), alpha=1.5)
    np.testing.assert_allclose(out["boxes"], [[20, 15, 40, 35], [0, 0, 20, 20]])
    assert out["labels"].tolist() == [3, 5]
    assert 0 < out["image"][25, 30, 0] < 255  # blended inside a's square only
    assert out["image_id"] == 1


def test_cutmix_drops_covered_and_clips_pasted_boxes():
    a = _square_sample(box=(20, 15, 40, 35))
    b = _square_sample(box=(0, 0, 80, 60))
    b["labels"] = np.array([5], np.int32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = A.cutmix(a, b, rng, alpha=1.0, max_covered=0.7)
        pasted = out["labels"] == 5
        if pasted.any():  # b's full-image box is clipped to the pasted rectangle
            rect = out["boxes"][pasted][0]
            x0, y0, x1, y1 = rect.astype(int)
            assert np.array_equal(out["image"][y0:y1, x0:x1], b["image"][y0:y1, x0:x1])
            cover = A.covered_fraction(a["boxes"], tuple(rect))[0]
            assert (3 in out["labels"].tolist()) == (cover <= 0.7)


def test_random_erasing_drops_a_fully_covered_box():
    s = _square_sample(h=20, w=20, box=(5, 5, 8, 8))
    dropped = kept = 0
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = A.random_erasing(s, rng, scale=(0.3, 0.5))
        changed = (out["image"] != s["image"]).any(-1)
        cover = changed[5:8, 5:8].mean()
        dropped += len(out["boxes"]) == 0
        kept += len(out["boxes"]) == 1
        if cover > 0.95:  # (noise can equal the old pixel value, hence not exactly 1)
            assert len(out["boxes"]) == 0
        if cover == 0:
            assert len(out["boxes"]) == 1
        assert out["image"].shape == s["image"].shape
    assert dropped > 0 and kept > 0


def test_off_by_default_and_hooked_into_custom_dataset(tmp_path):
    from coco_fixtures import write_dataset

    from detr_jax.data.custom import CocoJsonDataset
    from detr_jax.data.transforms import TransformConfig

    cfg = base_config().augment
    assert A.make_augment(cfg) is None
    cfg.randaugment_num_ops, cfg.cutmix_prob, cfg.mixup_prob = 2, 0.5, 0.5
    cfg.random_erasing_prob = 0.5
    write_dataset(str(tmp_path))
    ann, im = os.path.join(tmp_path, "annotations.json"), os.path.join(tmp_path, "images")
    t = TransformConfig(scales=(32, 48), max_size=64, select_scales=(32,), crop_min=16,
                        crop_max=32, eval_size=48)
    ds = CocoJsonDataset(ann, im, ann, im, transforms=t, augment=A.make_augment(cfg))
    it = ds.train_samples()
    for _ in range(12):
        s = next(it)
        h, w = s["image"].shape[:2]
        b = s["boxes"]
        assert len(b) == len(s["labels"]) and set(s["labels"].tolist()) <= {0, 1, 2}
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert np.all(b[:, [0, 2]] <= w) and np.all(b[:, [1, 3]] <= h)
