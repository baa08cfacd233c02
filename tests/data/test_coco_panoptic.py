"""COCO panoptic reader (detr_jax/data/coco_panoptic.py) and the custom panoptic dataset, on small
files written here (PNG ids encoded by hand: R + 256 G + 256^2 B)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from detr_jax.data import build_dataset, train_batches
from detr_jax.data.batching import collate
from detr_jax.data.coco_json import DataError
from detr_jax.data.coco_panoptic import load_coco_panoptic, panoptic_sample
from detr_jax.data.custom_panoptic import CocoPanopticDataset

H, W = 24, 32
CATEGORIES = [  # out of order, stuff declared first, non-contiguous ids
    {"id": 150, "name": "road", "isthing": 0},
    {"id": 5, "name": "car", "isthing": 1},
    {"id": 120, "name": "grass", "isthing": 0},
    {"id": 2, "name": "person", "isthing": 1},
]
# labels: things by id (person 2 -> 0, car 5 -> 1), then stuff by id (grass -> 2, road -> 3)


def _ids_image_1() -> np.ndarray:
    ids = np.full((H, W), 70000, np.int64)  # road (an id needing the B channel)
    ids[:8] = 300  # grass (R and G)
    ids[10:20, 4:12] = 7  # a person
    ids[12:22, 20:30] = 8  # a car
    ids[2:4, 26:30] = 9  # a crowd of people
    ids[0, 0] = 0  # VOID
    ids[23, 31] = 4242  # an id that no segment declares
    return ids


def _png(ids: np.ndarray) -> Image.Image:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def _write(root: str, **changes) -> str:
    for d in ("images", "pan"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 50, np.uint8)).save(os.path.join(root, "images", "1.jpg"))
    Image.fromarray(np.full((H, W, 3), 80, np.uint8)).save(os.path.join(root, "images", "2.jpg"))
    _png(_ids_image_1()).save(os.path.join(root, "pan", "1.png"))
    _png(np.full((H, W), 11, np.int64)).save(os.path.join(root, "pan", "2.png"))
    data = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "2.jpg", "width": W, "height": H}],
        "annotations": [
            {"image_id": 1, "file_name": "1.png", "segments_info": [
                {"id": 7, "category_id": 2, "iscrowd": 0},
                {"id": 300, "category_id": 120, "iscrowd": 0},
                {"id": 8, "category_id": 5, "iscrowd": 0},
                {"id": 9, "category_id": 2, "iscrowd": 1},
                {"id": 70000, "category_id": 150, "iscrowd": 0},
                {"id": 55, "category_id": 5, "iscrowd": 0},  # no pixel in the PNG
            ]},
            {"image_id": 2, "file_name": "2.png", "segments_info": [
                {"id": 11, "category_id": 120, "iscrowd": 0}]},
        ],
        "categories": CATEGORIES,
    }
    data.update(changes)
    path = os.path.join(root, "panoptic.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def test_reader_decodes_segments_labels_boxes_and_repairs(tmp_path, caplog):
    path = _write(str(tmp_path))
    idx = load_coco_panoptic(path, str(tmp_path / "pan"), str(tmp_path / "images"))
    assert idx.category_ids == (2, 5, 120, 150)
    assert idx.class_names == ("person", "car", "grass", "road")
    assert idx.is_thing == (True, True, False, False)
    with caplog.at_level(logging.WARNING):
        s = panoptic_sample(idx.records[0], idx)
    ids = _ids_image_1()
    order = [7, 300, 8, 9, 70000]  # the declared order, segment 55 dropped
    assert s["labels"].tolist() == [0, 2, 1, 0, 3]
    assert s["is_thing"].tolist() == [True, False, True, True, False]
    assert s["iscrowd"].tolist() == [False, False, False, True, False]
    for m, sid in zip(s["masks"], order, strict=True):
        np.testing.assert_array_equal(m, ids == sid)
    np.testing.assert_array_equal(s["boxes"][0], [4, 10, 12, 20])  # the person, xyxy pixels
    np.testing.assert_array_equal(s["boxes"][2], [20, 12, 30, 22])
    pan = s["panoptic"]
    assert pan["ids"][23, 31] == 0 and pan["ids"][0, 0] == 0  # undeclared id -> VOID
    assert pan["ids"][5, 5] == 300 and pan["ids"][23, 0] == 70000
    assert [g["id"] for g in pan["segments"]] == order
    assert pan["segments"][0] == {"id": 7, "category_id": 0, "iscrowd": 0, "area": 80,
                                  "bbox": [4.0, 10.0, 8.0, 10.0]}
    log = caplog.text
    assert "1.png: 1 segment(s) with no pixel dropped (ids [55])" in log
    assert "1 pixels carry ids [4242] that no segment declares; set to VOID" in log
    assert s["image"].shape == (H, W, 3) and s["orig_size"].tolist() == [H, W]


@pytest.mark.parametrize("changes, message", [
    ({"annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": [
        {"id": 7, "category_id": 3}]}]}, r"segments_info\[0\] \(id=7\) has category_id 3"),
    ({"annotations": [{"image_id": 1, "file_name": "1.png", "segments_info": [
        {"id": 7, "category_id": 2}, {"id": 7, "category_id": 5}]}]}, "segment id 7"),
    ({"annotations": [{"image_id": 9, "file_name": "1.png", "segments_info": []}]},
     r"annotations\[0\] \(image_id=9\) refers to an image id not in 'images'"),
    ({"annotations": [{"image_id": 1, "file_name": "x.png", "segments_info": []}]},
     "PNG not found: .*x.png"),
    ({"categories": [{"id": 2, "name": "person"}]}, r"categories\[0\] \(id=2\) lacks key "
                                                    "'isthing'"),
])
def test_bad_files_name_the_record(tmp_path, changes, message):
    path = _write(str(tmp_path), **changes)
    with pytest.raises(DataError, match=message) as e:
        load_coco_panoptic(path, str(tmp_path / "pan"), str(tmp_path / "images"))
    assert str(e.value).startswith(path)


def test_png_of_another_size_is_refused(tmp_path):
    path = _write(str(tmp_path))
    _png(np.ones((H, W + 2), np.int64)).save(tmp_path / "pan" / "2.png")
    idx = load_coco_panoptic(path, str(tmp_path / "pan"), str(tmp_path / "images"))
    with pytest.raises(DataError, match=r"2.png: PNG size 34x24 \(w x h\) is not the declared "
                                        "32x24 of image 2"):
        panoptic_sample(idx.records[1], idx)


def test_custom_panoptic_dataset_through_build_dataset(tmp_path):
    from pycocotools.coco import COCO

    path = _write(str(tmp_path))
    c = tiny_config(dataset="custom", num_classes=4)
    c.custom.train_annotations = c.custom.val_annotations = path
    c.custom.train_images = c.custom.val_images = str(tmp_path / "images")
    c.custom.train_panoptic_masks = c.custom.val_panoptic_masks = str(tmp_path / "pan")
    c.custom.num_workers = 1
    t = c.transforms
    t.scales, t.max_size, t.select_scales, t.crop_min, t.crop_max, t.eval_size = (
        [24, 32], 48, [24], 16, 24, 24)
    c.data.with_masks = True
    ds = build_dataset(c)
    assert isinstance(ds, CocoPanopticDataset) and ds.with_masks
    assert ds.is_thing == (True, True, False, False) and ds.category_ids == (2, 5, 120, 150)
    batch = next(train_batches(ds, global_batch_size=2, start_step=0, buckets=[(48, 48)],
                               max_boxes=6))
    assert batch["masks"].shape == (2, 6, 48, 48) and batch["is_thing"].shape == (2, 6)
    # crowd segments are in the samples but not in the batch targets
    raw = ds.raw_sample(ds.train.records[0])
    assert raw["iscrowd"].tolist() == [False, False, False, True, False]
    one, stats = collate([raw], buckets=[(48, 48)], max_boxes=6, with_masks=True)
    assert one["box_valid"].sum() == 4 and stats.num_crowd_boxes == 1
    np.testing.assert_array_equal(one["masks"][0, 3, :H, :W], _ids_image_1() == 70000)
    v = ds.val_samples()[0]
    assert v["masks"].shape[1:] == v["image"].shape[:2]
    gt = ds.coco_ground_truth()
    assert [c["id"] for c in gt["categories"]] == [2, 5]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [(a["category_id"], a["iscrowd"]) for a in anns] == [(2, 0), (5, 0), (2, 1)]
    np.testing.assert_array_equal(coco.annToMask(anns[1]).astype(bool), _ids_image_1() == 8)
    c.custom.val_panoptic_masks = ""
    from detr_jax.config_validation import ConfigError, validate_config

    with pytest.raises(ConfigError, match="must be set together"):
        validate_config(c, 1)
