"""Tests for detr_jax.evaluation.visualize."""

import numpy as np
from PIL import Image

from detr_jax.evaluation.visualize import draw_detections, image_grid, save_png

NAMES = ["circle", "square"]


def _gray(h, w):
    return np.full((h, w, 3), 128, np.uint8)


def test_output_shape_dtype_and_upscale():
    img = _gray(48, 64)
    out = draw_detections(img, np.zeros((0, 4)), np.zeros(0, int), np.zeros(0), NAMES)
    assert out.dtype == np.uint8
    assert out.shape[2] == 3
    assert min(out.shape[:2]) >= 256
    assert out.shape[0] * 64 == out.shape[1] * 48  # aspect ratio kept (integer factor)
    big = draw_detections(_gray(300, 400), np.zeros((0, 4)), [], [], NAMES)
    assert big.shape == (300, 400, 3)
    np.testing.assert_array_equal(big, 128)


def test_drawn_box_changes_edge_pixels():
    img = _gray(300, 300)
    box = np.array([[50.0, 80.0, 150.0, 200.0]])
    out = draw_detections(img, box, np.array([1]), np.array([0.9]), NAMES)
    assert out.shape == img.shape
    # left/right/bottom edges, mid-way along
    for y, x in [(140, 50), (140, 150), (200, 100)]:
        assert np.any(out[y, x] != 128), (y, x)
    # inside and far outside untouched
    assert np.all(out[140, 100] == 128)
    assert np.all(out[280, 280] == 128)
    np.testing.assert_array_equal(img, 128)  # input not modified


def test_below_threshold_not_drawn_and_gt_drawn():
    img = _gray(300, 300)
    box = np.array([[50.0, 80.0, 150.0, 200.0]])
    out = draw_detections(img, box, np.array([0]), np.array([0.2]), NAMES, score_threshold=0.5)
    np.testing.assert_array_equal(out, img)
    out = draw_detections(img, box[:0], [], [], NAMES, gt_boxes=box, gt_labels=np.array([0]))
    left_edge = out[80:201, 50]
    assert np.any(np.all(left_edge == 255, axis=-1))  # white dashes
    assert np.any(np.all(left_edge == 128, axis=-1))  # gaps between dashes
    assert np.all(out[140, 100] == 128)


def test_image_grid_shape():
    imgs = [np.full((10, 20, 3), i, np.uint8) for i in range(5)]
    grid = image_grid(imgs, cols=3)
    assert grid.shape == (20, 60, 3) and grid.dtype == np.uint8
    assert np.all(grid[10:20, 0:20] == 3)
    assert np.all(grid[10:20, 40:60] == 0)  # empty cell
    mixed = image_grid([np.ones((5, 8, 3), np.uint8), np.ones((7, 4, 3), np.uint8)], cols=4)
    assert mixed.shape == (7, 16, 3)


def test_save_png_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, size=(12, 9, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "x.png"
    save_png(path, arr)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)
