"""COCO panoptic PNG + JSON: the encoding by hand, the bbox convention and a round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from detr_jax.evaluation.panoptic_format import (
    panoptic_annotation,
    panoptic_json,
    read_panoptic_prediction,
    segment_bbox,
    write_panoptic_json,
    write_panoptic_prediction,
)

CAT_IDS = [1, 7, 184]  # original ids of contiguous labels 0, 1, 2


def _prediction():
    ids = np.zeros((6, 9), np.int32)
    ids[1:3, 2:5] = 1      # label 0, 6 px, bbox x=2 y=1 w=3 h=2
    ids[3:6, 0:9] = 300    # label 2 (stuff), 27 px; 300 = (44, 1, 0) in RGB
    ids[0, 8] = 70000      # label 1, 1 px; 70000 = (112, 17, 1)
    segments = [
        {"id": 1, "category_id": 0, "isthing": True, "score": 0.9, "area": 6},
        {"id": 300, "category_id": 2, "isthing": False, "score": 0.85, "area": 27},
        {"id": 70000, "category_id": 1, "isthing": True, "score": 0.8, "area": 1},
        {"id": 5, "category_id": 1, "isthing": True, "score": 0.8, "area": 0},  # not in ids
    ]
    return ids, segments


def test_bbox_is_inclusive_xywh():
    m = np.zeros((5, 7), bool)
    m[1, 2] = m[3, 5] = True
    assert segment_bbox(m) == [2, 1, 4, 3]
    assert segment_bbox(np.zeros((2, 2), bool)) == [0, 0, 0, 0]


def test_annotation_entry_by_hand():
    ids, segments = _prediction()
    ann = panoptic_annotation(ids, segments, image_id=42, file_name="a.png", category_ids=CAT_IDS)
    assert ann == {"image_id": 42, "file_name": "a.png", "segments_info": [
        {"id": 1, "category_id": 1, "area": 6, "bbox": [2, 1, 3, 2], "iscrowd": 0},
        {"id": 300, "category_id": 184, "area": 27, "bbox": [0, 3, 9, 3], "iscrowd": 0},
        {"id": 70000, "category_id": 7, "area": 1, "bbox": [8, 0, 1, 1], "iscrowd": 0},
    ]}
    json.dumps(ann)
    with pytest.raises(ValueError, match="segments lack"):
        panoptic_annotation(ids, segments[:1], 42, "a.png", CAT_IDS)


def test_png_pixels_and_round_trip(tmp_path):
    ids, segments = _prediction()
    ann = write_panoptic_prediction(tmp_path / "pan", ids, segments, 42, CAT_IDS)
    assert ann["file_name"] == "000000000042.png"
    rgb = np.asarray(Image.open(tmp_path / "pan" / ann["file_name"]))
    assert rgb.shape == (6, 9, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[4, 4], [44, 1, 0])
    np.testing.assert_array_equal(rgb[0, 8], [112, 17, 1])
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])

    data = panoptic_json([ann], [{"id": 42, "height": 6, "width": 9,
                                  "file_name": "000000000042.jpg"}],
                         [{"id": c, "name": str(c), "isthing": int(c < 100)} for c in CAT_IDS])
    write_panoptic_json(tmp_path / "pan.json", data)
    loaded = json.loads((tmp_path / "pan.json").read_text())
    back_ids, back_segs = read_panoptic_prediction(tmp_path / "pan", loaded["annotations"][0],
                                                   CAT_IDS)
    np.testing.assert_array_equal(back_ids, ids)
    assert [(s["id"], s["category_id"], s["area"]) for s in back_segs] == [
        (1, 0, 6), (300, 2, 27), (70000, 1, 1)]
    raw_ids, raw_segs = read_panoptic_prediction(tmp_path / "pan", loaded["annotations"][0])
    assert [s["category_id"] for s in raw_segs] == [1, 184, 7]
