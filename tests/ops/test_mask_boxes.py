"""`masks_to_boxes` on hand-worked masks: cells to pixels, clipping to the real image, padding
cells ignored, empty masks, leading axes."""

from __future__ import annotations

import numpy as np

from detr_jax.ops.mask_boxes import masks_to_boxes


def test_masks_to_boxes_by_hand():
    m = np.zeros((2, 3, 4, 5), bool)  # [B, Q, h, w] at stride 4: canvas 16 x 20
    m[0, 0, 1:3, 2] = True  # rows 1-2, column 2 -> x 8..12, y 4..12
    m[0, 1, 3, 4] = True  # the last cell: x 16..20, y 12..16, clipped to a 14 x 18 image
    m[1, 0, 0, 0] = True  # image 1 is 6 x 7: cell (0, 0) -> x 0..4, y 0..4
    m[1, 0, 2, 3] = True  # outside image 1 (row 2 starts at y 8 >= 6): padding, ignored
    m[1, 1, 3, 4] = True  # only padding -> empty
    real_hw = np.asarray([[14, 18], [6, 7]], np.float32)
    boxes = np.asarray(masks_to_boxes(m, real_hw, 4))

    def cxcywh(x0, y0, x1, y1, w, h):
        return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]

    np.testing.assert_allclose(boxes[0, 0], cxcywh(8, 4, 12, 12, 18, 14), rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 1], cxcywh(16, 12, 18, 14, 18, 14), rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 2], 0.0)  # empty
    np.testing.assert_allclose(boxes[1, 0], cxcywh(0, 0, 4, 4, 7, 6), rtol=1e-6)
    np.testing.assert_allclose(boxes[1, 1], 0.0)
    # Leading axes (decoder layers) broadcast over the same images.
    stacked = np.asarray(masks_to_boxes(np.stack([m, m[:, ::-1]]), real_hw, 4))
    np.testing.assert_allclose(stacked[0], boxes)
    np.testing.assert_allclose(stacked[1], boxes[:, ::-1])
