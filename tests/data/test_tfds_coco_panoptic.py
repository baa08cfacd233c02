"""TFDS ``coco/2017_panoptic`` -> panoptic samples, on hand-made examples shaped as TFDS 4.9's
feature spec (no download), and the category table against the builder's own ClassLabel."""

from __future__ import annotations

import numpy as np
import pytest

from detr_jax.data.tfds_coco_panoptic import (
    NUM_PANOPTIC_CLASSES,
    PANOPTIC_CATEGORY_IDS,
    PANOPTIC_IS_THING,
    PANOPTIC_NAMES,
    panoptic_example_to_sample,
)

H, W = 12, 16


def _rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _example():
    ids = np.full((H, W), 3_000_001, np.int64)  # wall-other-merged (label 131)
    ids[:4] = 4242  # sky-other-merged (label 119)
    ids[5:9, 2:6] = 5  # person (label 0)
    ids[6:10, 10:14] = 6  # a crowd of cars (label 2)
    ids[11, 15] = 0  # VOID
    return ids, {
        "image": np.full((H, W, 3), 120, np.uint8),
        "image/filename": b"000000000139.jpg",
        "image/id": 139,
        "panoptic_image": _rgb(ids),
        "panoptic_image/filename": b"000000000139.png",
        "panoptic_objects": {
            "id": np.array([5, 4242, 6, 3_000_001, 77, 8], np.int64),
            "area": np.array([16, 64, 16, 95, 3, 1], np.int64),
            "bbox": np.zeros((6, 4), np.float32),  # (unused: boxes come from the masks)
            "label": np.array([0, 119, 2, 131, 5, 133], np.int64),
            "is_crowd": np.array([False, False, True, False, False, False]),
        },
    }


def test_category_table():
    assert NUM_PANOPTIC_CLASSES == 133 == len(PANOPTIC_NAMES) == len(PANOPTIC_IS_THING)
    assert PANOPTIC_IS_THING == (True,) * 80 + (False,) * 53
    things, stuff = PANOPTIC_CATEGORY_IDS[:80], PANOPTIC_CATEGORY_IDS[80:]
    assert list(things) == sorted(things) and list(stuff) == sorted(stuff)
    assert things[-1] == 90 < stuff[0] == 92 and stuff[-1] == 200
    assert PANOPTIC_NAMES[0] == "person" and PANOPTIC_NAMES[80] == "banner"
    assert PANOPTIC_NAMES[119] == "sky-other-merged" and PANOPTIC_CATEGORY_IDS[119] == 187
    assert PANOPTIC_NAMES[131] == "wall-other-merged" and PANOPTIC_CATEGORY_IDS[131] == 199


def test_example_to_sample():
    ids, ex = _example()
    s = panoptic_example_to_sample(ex)
    # object 77 (label 5) has no pixel, object 8 has label 133 (outside the 133): dropped
    assert s["labels"].tolist() == [0, 119, 2, 131]
    assert s["is_thing"].tolist() == [True, False, True, False]
    assert s["iscrowd"].tolist() == [False, False, True, False]
    for m, sid in zip(s["masks"], (5, 4242, 6, 3_000_001), strict=True):
        np.testing.assert_array_equal(m, ids == sid)
    np.testing.assert_array_equal(s["boxes"], [[2, 5, 6, 9], [0, 0, 16, 4], [10, 6, 14, 10],
                                               [0, 4, 16, 12]])
    assert s["panoptic"]["ids"][11, 15] == 0 and s["panoptic"]["ids"][0, 0] == 4242
    assert [g["category_id"] for g in s["panoptic"]["segments"]] == [0, 119, 2, 131]
    assert s["image_id"] == 139 and s["orig_size"].tolist() == [H, W]
    assert s["image"].shape == (H, W, 3)


def test_grey_image_and_mismatched_png_and_ragged_fields():
    ids, ex = _example()
    ex["image"] = np.full((H, W, 1), 7, np.uint8)
    ex["panoptic_image"] = _rgb(np.kron(ids, np.ones((2, 2), np.int64)))  # twice the size
    ex["panoptic_objects"]["is_crowd"] = ex["panoptic_objects"]["is_crowd"][:2]
    s = panoptic_example_to_sample(ex)
    assert s["image"].shape == (H, W, 3)
    assert s["labels"].tolist() == [0, 119]  # cut to the shortest field
    np.testing.assert_array_equal(s["masks"][0], ids == 5)  # resized back, nearest


def test_features_read_are_in_the_tfds_spec(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    features = tfds.builder("coco/2017_panoptic", data_dir=str(tmp_path)).info.features
    _, ex = _example()
    assert set(ex) == set(features)
    objects = features["panoptic_objects"]
    assert set(ex["panoptic_objects"]) == set(objects.keys())
    assert objects["label"].num_classes == NUM_PANOPTIC_CLASSES


@pytest.mark.slow
def test_stream_on_mock_data(tmp_path):
    """The TFDS reader on mock records (random PNGs, so few objects survive): the samples
    carry aligned masks; the ground truth is things only."""
    pytest.importorskip("tensorflow_datasets")
    from test_tfds_coco import SMALL, mock_coco

    from detr_jax.data.tfds_coco_panoptic import TfdsCocoPanopticDataset

    with mock_coco(tmp_path):
        ds = TfdsCocoPanopticDataset(transforms=SMALL, shuffle_buffer=4, num_workers=1,
                                     max_val_images=2)
        assert ds.num_classes == 133 and ds.is_thing == PANOPTIC_IS_THING
        it = ds.train_samples()
        for _ in range(3):
            s = next(it)
            assert s["masks"].shape == (len(s["labels"]),) + s["image"].shape[:2]
            assert len(s["is_thing"]) == len(s["iscrowd"]) == len(s["labels"])
        gt = ds.coco_ground_truth()
        assert len(gt["images"]) == 2 and len(gt["categories"]) == 80
