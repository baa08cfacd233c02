"""Mask pictures: colours by class, shades by instance, VOID left as the image, borders."""

import numpy as np
import pytest

from detr_jax.evaluation.visualize import class_colour
from detr_jax.evaluation.visualize_masks import (
    blend_instances,
    blend_panoptic,
    panoptic_colours,
)


def _case():
    ids = np.zeros((6, 8), np.int32)
    ids[:, :4] = 7      # stuff of class 2
    ids[1:3, 5:7] = 9   # thing of class 0
    ids[4:6, 5:7] = 11  # another thing of class 0
    segments = [{"id": 7, "category_id": 2}, {"id": 9, "category_id": 0},
                {"id": 11, "category_id": 0}]
    return ids, segments


def test_colours_by_class_and_shades_by_instance():
    ids, segments = _case()
    rgb = panoptic_colours(ids, segments)
    np.testing.assert_array_equal(rgb[0, 0], class_colour(2))
    np.testing.assert_array_equal(rgb[1, 5], class_colour(0))
    assert not np.array_equal(rgb[1, 5], rgb[4, 5])  # two instances of one class differ
    np.testing.assert_array_equal(rgb[0, 7], 0)  # VOID


def test_blend_keeps_void_and_darkens_borders():
    ids, segments = _case()
    image = np.full((6, 8, 3), 200, np.uint8)
    out = blend_panoptic(image, ids, segments, alpha=0.5)
    np.testing.assert_array_equal(out[0, 7], 200)  # VOID, away from borders
    expected = 0.5 * 200 + 0.5 * np.asarray(class_colour(2), np.float32)
    np.testing.assert_allclose(out[0, 1], expected.astype(np.uint8), atol=1)
    assert out[0, 4].sum() < out[0, 7].sum()  # the stuff / VOID border is dark
    with pytest.raises(ValueError, match="does not match"):
        blend_panoptic(image[:3], ids, segments)


def test_blend_instances_paints_only_the_masks():
    image = np.zeros((4, 4, 3), np.uint8)
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    out = blend_instances(image, masks, [1, 1], alpha=1.0)
    np.testing.assert_array_equal(out[3], 0)
    np.testing.assert_array_equal(out[0, 0], class_colour(1))
    assert not np.array_equal(out[2, 0], out[0, 0])  # the second instance, another shade
