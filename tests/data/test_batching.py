"""Tests for detr_jax.data.batching."""

import itertools

import numpy as np
import pytest

from detr_jax.data.batching import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CollateStats,
    batch_iterator,
    choose_bucket,
    collate,
)

BUCKETS = [(64, 64), (64, 128), (128, 128)]


def _sample(h, w, boxes, labels=None, image_id=0, orig_size=None, fill=100):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.arange(len(boxes), dtype=np.int32) if labels is None else labels
    s = {"image": np.full((h, w, 3), fill, np.uint8), "boxes": boxes,
         "labels": np.asarray(labels, np.int32), "image_id": image_id}
    if orig_size is not None:
        s["orig_size"] = np.asarray(orig_size, np.int32)
    return s


def test_choose_bucket():
    assert choose_bucket(64, 64, BUCKETS) == (64, 64)
    assert choose_bucket(30, 100, BUCKETS) == (64, 128)
    assert choose_bucket(100, 30, BUCKETS) == (128, 128)
    assert choose_bucket(10, 10, [(128, 128), (32, 32), (64, 64)]) == (32, 32)
    with pytest.raises(ValueError, match=r"h=200, w=50.*\(128, 128\)"):
        choose_bucket(200, 50, BUCKETS)


def test_box_conversion_non_square():
    # 40 high x 80 wide image; box x 10..30, y 5..25 (pixels, xyxy).
    s = _sample(40, 80, [[10, 5, 30, 25]], labels=[3], image_id=17)
    batch, stats = collate([s], buckets=BUCKETS, max_boxes=4)
    # cx = 20/80, cy = 15/40, w = 20/80, h = 20/40
    np.testing.assert_allclose(batch["boxes"][0, 0], [0.25, 0.375, 0.25, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(batch["boxes"][0, 1:], 0)
    assert batch["labels"][0].tolist() == [3, 0, 0, 0]
    assert batch["box_valid"][0].tolist() == [True, False, False, False]
    assert batch["size"][0].tolist() == [40, 80]
    assert batch["orig_size"][0].tolist() == [40, 80]  # defaults to the image shape
    assert batch["image_id"].tolist() == [17]
    assert stats == CollateStats(0, 0)


def test_dtypes_shapes_and_padding():
    a = _sample(40, 80, [[0, 0, 10, 10]], image_id=1, orig_size=(400, 800), fill=255)
    b = _sample(60, 50, [[0, 0, 10, 10], [5, 5, 20, 30]], image_id=2, fill=0)
    batch, _ = collate([a, b], buckets=BUCKETS, max_boxes=3)
    expected = {
        "image": ((2, 64, 128, 3), np.float32), "pixel_mask": ((2, 64, 128), np.bool_),
        "boxes": ((2, 3, 4), np.float32), "labels": ((2, 3), np.int32),
        "box_valid": ((2, 3), np.bool_), "size": ((2, 2), np.int32),
        "orig_size": ((2, 2), np.int32), "image_id": ((2,), np.int32),
        "image_valid": ((2,), np.bool_),
    }
    assert set(batch) == set(expected)
    for k, (shape, dtype) in expected.items():
        assert batch[k].shape == shape and batch[k].dtype == dtype, k
    pm = batch["pixel_mask"]
    assert pm[0, :40, :80].all() and not pm[0, 40:].any() and not pm[0, :, 80:].any()
    assert pm[1, :60, :50].all() and not pm[1, 60:].any() and not pm[1, :, 50:].any()
    assert pm[0].sum() == 40 * 80 and pm[1].sum() == 60 * 50
    # Normalisation and zero padding.
    np.testing.assert_allclose(batch["image"][0, 0, 0], (1.0 - IMAGENET_MEAN) / IMAGENET_STD,
                               rtol=1e-5)
    np.testing.assert_allclose(batch["image"][1, 0, 0], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-5)
    assert not batch["image"][~pm].any()
    assert batch["orig_size"].tolist() == [[400, 800], [60, 50]]
    assert batch["size"].tolist() == [[40, 80], [60, 50]]
    assert batch["box_valid"].tolist() == [[True, False, False], [True, True, False]]
    assert batch["image_valid"].tolist() == [True, True]


def test_bucket_is_smallest_fitting_largest_image():
    small = _sample(30, 30, [])
    wide = _sample(50, 120, [])
    tall = _sample(100, 20, [])
    assert collate([small], buckets=BUCKETS, max_boxes=1)[0]["image"].shape[1:3] == (64, 64)
    assert collate([small, wide], buckets=BUCKETS,
                   max_boxes=1)[0]["image"].shape[1:3] == (64, 128)
    assert collate([small, tall], buckets=BUCKETS,
                   max_boxes=1)[0]["image"].shape[1:3] == (128, 128)
    with pytest.raises(ValueError, match="no bucket fits"):
        collate([_sample(130, 10, [])], buckets=BUCKETS, max_boxes=1)


def test_truncation_counted():
    boxes = [[i, i, i + 5, i + 5] for i in range(7)]
    a = _sample(64, 64, boxes)
    b = _sample(64, 64, boxes[:2])
    batch, stats = collate([a, b], buckets=BUCKETS, max_boxes=4)
    assert stats.num_truncated_boxes == 3 and stats.num_degenerate_boxes == 0
    assert batch["box_valid"].sum(axis=1).tolist() == [4, 2]
    assert batch["labels"][0].tolist() == [0, 1, 2, 3]  # first max_boxes kept
    assert stats.as_dict() == {"num_truncated_boxes": 3, "num_degenerate_boxes": 0,
                               "num_crowd_boxes": 0}


def test_clipping_and_degenerate_boxes():
    boxes = [
        [-10, -10, 20, 20],  # clipped to 0..20
        [30, 30, 30, 40],  # zero width
        [70, 10, 90, 20],  # entirely right of the 64-wide image -> zero width after clip
        [10, 20, 30, 15],  # negative height
        [50, 40, 80, 70],  # clipped to 50..64 x 40..64
    ]
    s = _sample(64, 64, boxes, labels=[1, 2, 3, 4, 5])
    batch, stats = collate([s], buckets=BUCKETS, max_boxes=5)
    assert stats.num_degenerate_boxes == 3 and stats.num_truncated_boxes == 0
    assert batch["labels"][0].tolist() == [1, 5, 0, 0, 0]
    np.testing.assert_allclose(batch["boxes"][0, 0], [10 / 64, 10 / 64, 20 / 64, 20 / 64])
    np.testing.assert_allclose(batch["boxes"][0, 1], [57 / 64, 52 / 64, 14 / 64, 24 / 64])
    assert np.all(batch["boxes"][batch["box_valid"]] <= 1.0)


def test_degenerate_before_truncation():
    boxes = [[0, 0, 0, 5]] + [[0, 0, 5, 5]] * 3
    _, stats = collate([_sample(64, 64, boxes)], buckets=BUCKETS, max_boxes=2)
    assert stats == CollateStats(num_truncated_boxes=1, num_degenerate_boxes=1)
    assert stats + stats == CollateStats(2, 2)


def test_filler_images():
    s = _sample(40, 40, [[0, 0, 10, 10]], image_id=9)
    batch, _ = collate([s], buckets=BUCKETS, max_boxes=2, batch_size=3)
    assert batch["image"].shape == (3, 64, 64, 3)
    assert batch["image_valid"].tolist() == [True, False, False]
    assert not batch["image"][1:].any() and not batch["pixel_mask"][1:].any()
    assert not batch["box_valid"][1:].any() and not batch["boxes"][1:].any()
    assert batch["image_id"].tolist() == [9, -1, -1]
    with pytest.raises(ValueError):
        collate([s, s], buckets=BUCKETS, max_boxes=2, batch_size=1)


def test_empty_samples():
    batch, _ = collate([], buckets=BUCKETS, max_boxes=2, batch_size=2)
    assert batch["image"].shape == (2, 64, 64, 3) and not batch["image_valid"].any()
    with pytest.raises(ValueError):
        collate([], buckets=BUCKETS, max_boxes=2)


def test_batch_iterator_finite_and_infinite():
    samples = [_sample(40, 40, [[0, 0, 10, 10]], image_id=i) for i in range(5)]
    out = list(batch_iterator(iter(samples), batch_size=2, buckets=BUCKETS, max_boxes=2))
    assert len(out) == 3
    assert [b["image_id"].tolist() for b, _ in out] == [[0, 1], [2, 3], [4, -1]]
    assert out[-1][0]["image_valid"].tolist() == [True, False]
    assert all(b["image"].shape == (2, 64, 64, 3) for b, _ in out)

    def forever():
        for i in itertools.count():
            yield _sample(40, 40, [], image_id=i)

    it = batch_iterator(forever(), batch_size=4, buckets=BUCKETS, max_boxes=1)
    batches = list(itertools.islice(it, 3))
    assert batches[2][0]["image_id"].tolist() == [8, 9, 10, 11]
    assert list(batch_iterator(iter([]), batch_size=2, buckets=BUCKETS, max_boxes=1)) == []


def test_with_shapes_samples():
    from detr_jax.data.shapes import STANDARD_SHAPES, generate_sample

    samples = [generate_sample(STANDARD_SHAPES, 0, i) for i in range(4)]
    batch, stats = collate(samples, buckets=[(96, 96)], max_boxes=8)
    assert stats == CollateStats()
    assert batch["box_valid"].sum() == sum(len(s["labels"]) for s in samples)
    v = batch["box_valid"]
    assert np.all((batch["boxes"][v] > 0) & (batch["boxes"][v] <= 1))
