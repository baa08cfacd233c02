"""Masks in batches (``with_masks``): slots aligned with the boxes on the padded canvas."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config

from detr_jax.data import build_dataset, train_batches
from detr_jax.data.batching import CollateStats, batch_iterator, collate, pad_to_bucket

BUCKETS = [(32, 32), (48, 64)]


def _sample(h, w, boxes, image_id=0, is_thing=None, iscrowd=None):
    """Target k's mask is the pixel block (k + 1, k + 1) alone: each slot is identifiable."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    masks = np.zeros((n, h, w), bool)
    for k in range(n):
        masks[k, k + 1, k + 1] = True
    s = {"image": np.full((h, w, 3), 9, np.uint8), "boxes": boxes,
         "labels": np.arange(10, 10 + n, dtype=np.int32), "masks": masks, "image_id": image_id}
    if is_thing is not None:
        s["is_thing"] = np.asarray(is_thing, bool)
    if iscrowd is not None:
        s["iscrowd"] = np.asarray(iscrowd, bool)
    return s


def _slot_of(mask: np.ndarray) -> int:
    """The target index a slot's mask came from (its single pixel is at (k + 1, k + 1))."""
    ys, xs = np.nonzero(mask)
    assert len(ys) == 1 and ys[0] == xs[0]
    return int(ys[0]) - 1


def test_masks_follow_the_box_slots_through_drops_and_truncation():
    # target 1 is degenerate (w = 0), target 2 crowd, target 4 is beyond max_boxes=3
    a = _sample(20, 30, [[0, 0, 5, 5], [3, 3, 3, 8], [1, 1, 9, 9], [2, 2, 6, 6], [4, 4, 8, 9],
                         [5, 5, 9, 9]], image_id=1, is_thing=[1, 1, 0, 0, 1, 0],
                iscrowd=[0, 0, 1, 0, 0, 0])
    b = _sample(40, 50, [[0, 0, 10, 10]], image_id=2)
    batch, stats = collate([a, b], buckets=BUCKETS, max_boxes=3, batch_size=3, with_masks=True)
    assert batch["masks"].shape == (3, 3, 48, 64) and batch["masks"].dtype == np.uint8
    assert batch["is_thing"].shape == (3, 3) and batch["is_thing"].dtype == bool
    # image 1 keeps targets 0, 3, 4 (labels 10, 13, 14) in slots 0..2
    assert batch["labels"][0].tolist() == [10, 13, 14]
    assert [_slot_of(m) for m in batch["masks"][0]] == [0, 3, 4]
    assert batch["is_thing"][0].tolist() == [True, False, True]
    assert stats == CollateStats(num_truncated_boxes=1, num_degenerate_boxes=1, num_crowd_boxes=1)
    # image 2: no is_thing field -> its targets are things; empty slots all zero / False
    assert _slot_of(batch["masks"][1, 0]) == 0 and batch["is_thing"][1].tolist() == [1, 0, 0]
    assert not batch["masks"][1, 1:].any() and not batch["masks"][2].any()  # filler image
    assert set(np.unique(batch["masks"]).tolist()) <= {0, 1}


def test_masks_sit_at_the_top_left_of_the_canvas():
    s = _sample(20, 30, [[0, 0, 30, 20]])
    s["masks"][0] = True
    batch, _ = collate([s], buckets=BUCKETS, max_boxes=2, with_masks=True)
    m = batch["masks"][0, 0]
    assert m.shape == (32, 32) and m[:20, :30].all() and m.sum() == 600
    np.testing.assert_array_equal(m.astype(bool), batch["pixel_mask"][0])
    padded = pad_to_bucket(batch, 48, 64)
    assert padded["masks"].shape == (1, 2, 48, 64) and padded["masks"].sum() == 600


def test_without_with_masks_nothing_is_added_and_masks_are_not_needed():
    s = _sample(20, 30, [[0, 0, 5, 5]])
    del s["masks"]
    batch, _ = collate([s], buckets=BUCKETS, max_boxes=2)
    assert "masks" not in batch and "is_thing" not in batch


def test_bad_masks_name_the_image():
    s = _sample(20, 30, [[0, 0, 5, 5]], image_id=77)
    bad = dict(s, masks=np.zeros((1, 10, 30), bool))
    with pytest.raises(ValueError, match=r"image 77: masks have shape \(1, 10, 30\)"):
        collate([bad], buckets=BUCKETS, max_boxes=2, with_masks=True)
    missing = {k: v for k, v in s.items() if k != "masks"}
    with pytest.raises(ValueError, match="image 77: with_masks=True.*no 'masks'"):
        collate([missing], buckets=BUCKETS, max_boxes=2, with_masks=True)
    with pytest.raises(ValueError, match="image 77: 1 boxes but 2 is_thing"):
        collate([dict(s, is_thing=np.ones(2, bool))], buckets=BUCKETS, max_boxes=2,
                with_masks=True)


def test_batch_iterator_and_all_filler_batches_keep_the_keys():
    it = batch_iterator(iter([_sample(20, 30, [[0, 0, 5, 5]])]), batch_size=2, buckets=BUCKETS,
                        max_boxes=2, with_masks=True)
    (batch, _), = list(it)
    assert batch["masks"].shape == (2, 2, 32, 32) and batch["image_valid"].tolist() == [1, 0]
    empty, _ = collate([], buckets=BUCKETS, max_boxes=2, batch_size=2, with_masks=True)
    assert empty["masks"].shape == (2, 2, 32, 32) and not empty["is_thing"].any()


def test_train_batches_carry_the_shapes_masks():
    c = tiny_config()
    c.data.with_masks = True
    ds = build_dataset(c)
    assert ds.with_masks
    batch = next(train_batches(ds, global_batch_size=2, start_step=0, buckets=[(96, 96)],
                               max_boxes=8))
    for i in range(2):
        s = ds.train_sample(i)
        n = len(s["labels"])
        np.testing.assert_array_equal(batch["masks"][i, :n], s["masks"].astype(np.uint8))
        assert not batch["masks"][i, n:].any() and batch["is_thing"][i, :n].all()
    off = next(train_batches(ds, global_batch_size=2, start_step=0, buckets=[(96, 96)],
                             max_boxes=8, with_masks=False))
    assert "masks" not in off
