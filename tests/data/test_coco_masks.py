"""COCO-JSON segmentations -> masks (polygons, RLE), checked at load, decoded lazily.

The reference masks come from pycocotools' own ``COCO.annToMask`` on the same file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from detr_jax.data import coco_json
from detr_jax.data.coco_json import load_coco_json
from detr_jax.data.coco_masks import rle_string_runs, segmentation_problem
from detr_jax.data.custom import CocoJsonDataset
from detr_jax.data.transforms import TransformConfig

H, W = 30, 40
SMALL = TransformConfig(scales=(24, 32), max_size=48, select_scales=(24,), crop_min=16,
                        crop_max=24, eval_size=32)


def _runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a bool mask, by hand: column-major runs, starting with 0s."""
    runs, current, n = [], False, 0
    for v in mask.T.reshape(-1):
        if v == current:
            n += 1
        else:
            runs.append(n)
            current, n = bool(v), 1
    return runs + [n]


def _blob(seed: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    r = np.random.default_rng(seed)
    y, x = r.integers(2, 12, 2)
    m[y:y + 12, x:x + 15] = True
    m[y + 3:y + 6, x + 2:x + 9] = False
    return m


def _write(root: str) -> str:
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(os.path.join(root, "images", "a.png"))
    compressed = mask_util.encode(np.asfortranarray(_blob(1).astype(np.uint8)))
    good = [
        [[5, 5, 30, 5, 18, 25]],  # a triangle
        {"size": [H, W], "counts": compressed["counts"].decode("ascii")},
        {"size": [H, W], "counts": _runs(_blob(2))},
        [[1, 1, 8, 1, 8, 8, 1, 8], [20, 20, 35, 20, 35, 28]],  # two parts
    ]
    bad = [
        [[5, 5, 30, 5, 18]],  # odd length
        {"size": [H + 1, W], "counts": _runs(np.zeros((H + 1, W), bool))},  # not the image size
        {"size": [H, W], "counts": [3, 4, 5]},  # runs do not cover the image
        {"size": [H, W], "counts": "\x7f\x7f"},  # not COCO's RLE alphabet
        [[1, 1, 5, 5]],  # two points (pycocotools would read it as a box)
    ]
    anns = []
    for segm in good + bad:
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 7,
                     "bbox": [1, 1, 20, 20], "segmentation": segm, "iscrowd": 0})
    anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]})
    crowd = {"size": [H, W], "counts": _runs(_blob(3))}
    anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 30, 20],
                 "segmentation": crowd, "iscrowd": 1})
    data = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
            "annotations": anns, "categories": [{"id": 7, "name": "blob"}]}
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def test_rle_string_runs_read_pycocotools_strings():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        m = rng.random((h, w)) < rng.random()
        s = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        runs = rle_string_runs(s)
        assert runs == _runs(m) and sum(runs) == h * w


def test_masks_match_pycocotools_and_bad_ones_are_skipped(tmp_path, caplog):
    from pycocotools.coco import COCO

    path = _write(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        idx = load_coco_json(path, str(tmp_path / "images"), with_masks=True)
    assert idx.counts["bad_segmentation"] == 6 and idx.counts["crowd"] == 1
    lines = [r.getMessage() for r in caplog.records if "skipped (" in r.getMessage()]
    assert len(lines) == 6
    assert lines[0].startswith(f"{path}: annotations[4] (id=5): segmentation polygon 0 has an "
                               "odd number of coordinates (5); skipped")
    assert "(id=6): RLE size [31, 40] does not match the image's [height, width] = [30, 40]" \
        in lines[1]
    assert "(id=10): has no 'segmentation'" in lines[5]
    rec, = idx.records
    masks = rec.masks()
    assert masks.shape == (4, H, W) and masks.dtype == bool
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(path)
    for k, aid in enumerate((1, 2, 3, 4)):
        np.testing.assert_array_equal(masks[k], coco.annToMask(coco.anns[aid]).astype(bool))
    np.testing.assert_array_equal(masks[1], _blob(1))
    np.testing.assert_array_equal(masks[2], _blob(2))
    # The crowd RLE (uncompressed) stays in the ground truth, decodable by pycocotools; the
    # skipped annotations are left out of it.
    gt_ids = sorted(a["id"] for a in idx.ground_truth["annotations"])
    assert gt_ids == [1, 2, 3, 4, 11]
    crowd = next(a for a in idx.ground_truth["annotations"] if a["id"] == 11)
    np.testing.assert_array_equal(coco.annToMask(crowd).astype(bool), _blob(3))


def test_segmentations_are_not_read_without_masks(tmp_path, monkeypatch):
    path = _write(str(tmp_path))

    def fail(*args, **kwargs):
        raise AssertionError("segmentation read with with_masks=False")

    monkeypatch.setattr(coco_json, "segmentation_problem", fail)
    monkeypatch.setattr(coco_json, "decode_masks", fail)
    idx = load_coco_json(path, str(tmp_path / "images"))
    rec, = idx.records
    assert rec.segmentations is None and len(rec.boxes) == 10  # every non-crowd box
    assert "bad_segmentation" not in idx.counts
    with pytest.raises(ValueError, match="loaded without masks"):
        rec.masks()
    ds = CocoJsonDataset(path, str(tmp_path / "images"), path, str(tmp_path / "images"),
                         transforms=SMALL, num_workers=1)
    assert "masks" not in ds.train_sample(0)


def test_dataset_samples_carry_masks_through_the_transforms(tmp_path):
    path = _write(str(tmp_path))
    images = str(tmp_path / "images")
    ds = CocoJsonDataset(path, images, path, images, transforms=SMALL, num_workers=1,
                         with_masks=True)
    raw = ds.raw_sample(ds.train.records[0])
    np.testing.assert_array_equal(raw["masks"][2], _blob(2))
    for i in range(6):
        s = ds.train_sample(i)
        assert s["masks"].shape == (len(s["boxes"]),) + s["image"].shape[:2]
    v = ds.val_samples()[0]
    assert v["masks"].shape == (4, 32, 42) and v["image"].shape == (32, 42, 3)


def test_segmentation_problem_forms():
    assert segmentation_problem([[0, 0, 4, 0, 4, 4]], 5, 5) is None
    assert segmentation_problem([], 5, 5) == "segmentation is an empty polygon list"
    assert "not a list of finite numbers" in segmentation_problem([[0, 0, 4, float("nan"), 1,
                                                                    1]], 5, 5)
    assert segmentation_problem({"size": [5, 5], "counts": [25]}, 5, 5) is None
    assert "negative" in segmentation_problem({"size": [5, 5], "counts": [30, -5]}, 5, 5)
    assert "must be a list of polygons or an RLE" in segmentation_problem(7, 5, 5)
