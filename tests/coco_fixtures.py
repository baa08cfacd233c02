"""Generated COCO-JSON fixtures for the data tests (images written with PIL, no download)."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
from PIL import Image

CATEGORIES = [  # non-contiguous ids, declared out of order
    {"id": 42, "name": "zebra", "supercategory": "animal"},
    {"id": 3, "name": "cat", "supercategory": "animal"},
    {"id": 17, "name": "dog", "supercategory": "animal"},
]


def _pattern(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    img[h // 4 : h // 2, w // 4 : w // 2] = 255
    return img


def write_dataset(root: str) -> dict:
    """Writes ``root/images/*`` and ``root/annotations.json``; returns the JSON dict.

    Images (all 40 high x 60 wide as declared unless noted):
      1 rgb.jpg   JPEG RGB, boxes of categories 42 and 3, plus a crowd box (17)
      2 gray.png  PNG grayscale (L), one box of 17, one with w = 0 (dropped), one reaching
                  outside the image (clipped)
      3 rgba.png  PNG RGBA, one box of 3
      4 cmyk.jpg  JPEG CMYK, no annotations (a negative)
      5 exif.jpg  stored 60 high x 40 wide with EXIF orientation 6 (displayed 40 x 60), one box
      6 i16.png   16-bit grayscale PNG, one box
    """
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    img_dir = os.path.join(root, "images")
    rgb = _pattern(40, 60, 1)
    Image.fromarray(rgb).save(os.path.join(img_dir, "rgb.jpg"), quality=95)
    Image.fromarray(rgb[..., 0]).save(os.path.join(img_dir, "gray.png"))
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(os.path.join(img_dir, "rgba.png"))
    Image.fromarray(rgb).convert("CMYK").save(os.path.join(img_dir, "cmyk.jpg"))
    # Stored rotated: displayed = rot90 of stored by EXIF 6 (rotate 270 ccw to display).
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # 60 x 40
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(os.path.join(img_dir, "exif.jpg"), exif=exif, quality=95)
    Image.fromarray(rgb[..., 1].astype(np.uint16) * 257).save(
        os.path.join(img_dir, "i16.png"))
    images = [
        {"id": 1, "file_name": "rgb.jpg", "width": 60, "height": 40},
        {"id": 2, "file_name": "gray.png", "width": 60, "height": 40},
        {"id": 3, "file_name": "rgba.png", "width": 60, "height": 40},
        {"id": 4, "file_name": "cmyk.jpg", "width": 60, "height": 40},
        {"id": 5, "file_name": "exif.jpg", "width": 60, "height": 40},
        {"id": 6, "file_name": "i16.png", "width": 60, "height": 40},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 42, "bbox": [15, 10, 15, 10], "area": 150,
         "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 20], "area": 200,
         "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 17, "bbox": [40, 20, 15, 15], "area": 100,
         "iscrowd": 1},
        {"id": 4, "image_id": 2, "category_id": 17, "bbox": [5, 5, 20, 10], "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        {"id": 6, "image_id": 2, "category_id": 42, "bbox": [50, 30, 20, 20], "iscrowd": 0},
        {"id": 7, "image_id": 3, "category_id": 3, "bbox": [15, 10, 15, 10]},
        {"id": 8, "image_id": 5, "category_id": 42, "bbox": [15, 10, 15, 10]},
        {"id": 9, "image_id": 6, "category_id": 17, "bbox": [15, 10, 15, 10]},
    ]
    data = {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}
    write_json(os.path.join(root, "annotations.json"), data)
    return data


def write_json(path: str, data: dict) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return path
