"""masks_to_boxes and real_image_size on hand-worked cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.ops.mask_ops import masks_to_boxes, real_image_size


def cxcywh(x0, y0, x1, y1, w, h):
    """Normalised cxcywh of an xyxy pixel box in a w x h image (written out by hand)."""
    return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]


def test_single_pixel_at_stride_1():
    m = np.zeros((5, 6), bool)
    m[2, 3] = True  # pixel x = 3, y = 2: the box [3, 4) x [2, 3)
    got = masks_to_boxes(jnp.asarray(m), jnp.asarray([5, 6]))
    np.testing.assert_allclose(got, [3.5 / 6, 2.5 / 5, 1 / 6, 1 / 5], rtol=1e-6)


def test_stride_4_cells_are_clipped_to_the_real_image():
    # A 4 x 4 grid of stride-4 cells (16 x 16 px canvas); the real image is 10 high, 13 wide.
    m = np.zeros((4, 4), bool)
    m[1:3, 2:4] = True  # pixels y in [4, 12) -> [4, 10); x in [8, 16) -> [8, 13)
    got = masks_to_boxes(jnp.asarray(m), jnp.asarray([10.0, 13.0]), stride=4)
    np.testing.assert_allclose(got, cxcywh(8, 4, 13, 10, 13, 10), rtol=1e-6)


def test_cells_in_the_padding_are_ignored():
    m = np.zeros((4, 4), bool)
    m[0, 0] = True  # pixels [0, 4) x [0, 4): inside
    m[3, 3] = True  # row 3 starts at y = 12 >= 10: padding
    m[0, 3] = True  # column 3 starts at x = 12 < 13: inside (one pixel column, x = 12)
    m[3, 0] = True  # padding again (its row)
    got = masks_to_boxes(jnp.asarray(m), jnp.asarray([10, 13]), stride=4)
    np.testing.assert_allclose(got, cxcywh(0, 0, 13, 4, 13, 10), rtol=1e-6)
    only_padding = np.zeros((4, 4), bool)
    only_padding[3, :] = True
    assert np.all(np.asarray(masks_to_boxes(jnp.asarray(only_padding), jnp.asarray([10, 13]),
                                            stride=4)) == 0)


def test_empty_masks_and_filler_images_give_zeros():
    empty = jnp.zeros((2, 3, 4), bool)
    assert np.all(np.asarray(masks_to_boxes(empty, jnp.asarray([3, 4]))) == 0)
    full = jnp.ones((3, 4), bool)
    np.testing.assert_array_equal(masks_to_boxes(full, jnp.asarray([0, 0])), np.zeros(4))
    np.testing.assert_allclose(masks_to_boxes(full, jnp.asarray([3, 4])), [0.5, 0.5, 1, 1])


def test_leading_dimensions_broadcast_per_image():
    """masks [L, B, Q, h, w] with image sizes [1, B, 1, 2], under jit."""
    masks = np.zeros((2, 2, 3, 3, 3), bool)
    masks[:, :, 0, 1, 1] = True  # one centre cell
    masks[:, :, 1] = True  # the whole canvas
    sizes = np.asarray([[12, 12], [6, 9]], np.float32)  # image 0 fills the 12 x 12 canvas
    got = np.asarray(jax.jit(lambda m, s: masks_to_boxes(m, s[None, :, None], stride=4))(
        masks, sizes))
    assert got.shape == (2, 2, 3, 4)
    np.testing.assert_allclose(got[:, 0, 0], [cxcywh(4, 4, 8, 8, 12, 12)] * 2, rtol=1e-6)
    # image 1 (6 high, 9 wide): the centre cell is pixels [4, 8) x [4, 8) -> [4, 8) x [4, 6)
    np.testing.assert_allclose(got[:, 1, 0], [cxcywh(4, 4, 8, 6, 9, 6)] * 2, rtol=1e-6)
    np.testing.assert_allclose(got[:, :, 1], np.full((2, 2, 4), [0.5, 0.5, 1, 1]), rtol=1e-6)
    assert np.all(got[:, :, 2] == 0)


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="image_size"):
        masks_to_boxes(jnp.zeros((3, 4), bool), jnp.asarray([3, 4, 5]))
    with pytest.raises(ValueError, match="masks"):
        masks_to_boxes(jnp.zeros((4,), bool), jnp.asarray([3, 4]))


def test_real_image_size_reads_the_top_left_image():
    mask = np.zeros((3, 7, 9), bool)
    mask[0] = True
    mask[1, :5, :2] = True
    got = np.asarray(real_image_size(jnp.asarray(mask)))
    np.testing.assert_array_equal(got, [[7, 9], [5, 2], [0, 0]])


def test_masks_to_boxes_by_hand_on_a_stride_4_canvas():
    m = np.zeros((2, 3, 4, 5), bool)  # [B, Q, h, w] at stride 4: canvas 16 x 20
    m[0, 0, 1:3, 2] = True  # rows 1-2, column 2 -> x 8..12, y 4..12
    m[0, 1, 3, 4] = True  # the last cell: x 16..20, y 12..16, clipped to a 14 x 18 image
    m[1, 0, 0, 0] = True  # image 1 is 6 x 7: cell (0, 0) -> x 0..4, y 0..4
    m[1, 0, 2, 3] = True  # outside image 1 (row 2 starts at y 8 >= 6): padding, ignored
    m[1, 1, 3, 4] = True  # only padding -> empty
    real_hw = np.asarray([[14, 18], [6, 7]], np.float32)
    boxes = np.asarray(masks_to_boxes(m, real_hw[:, None], 4))  # [B, 1, 2] vs [B, Q]

    def cxcywh(x0, y0, x1, y1, w, h):
        return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]

    np.testing.assert_allclose(boxes[0, 0], cxcywh(8, 4, 12, 12, 18, 14), rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 1], cxcywh(16, 12, 18, 14, 18, 14), rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 2], 0.0)  # empty
    np.testing.assert_allclose(boxes[1, 0], cxcywh(0, 0, 4, 4, 7, 6), rtol=1e-6)
    np.testing.assert_allclose(boxes[1, 1], 0.0)
    # Leading axes (decoder layers) broadcast over the same images.
    stacked = np.asarray(masks_to_boxes(np.stack([m, m[:, ::-1]]), real_hw[:, None], 4))
    np.testing.assert_allclose(stacked[0], boxes)
    np.testing.assert_allclose(stacked[1], boxes[:, ::-1])
