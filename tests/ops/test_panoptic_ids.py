"""COCO panoptic RGB <-> id encoding, against the format's definition (id = R + 256 G + 256^2 B)."""

import numpy as np
import pytest

from detr_jax.ops.panoptic_ids import id_to_rgb, rgb_to_id


def test_hand_worked_ids_and_round_trip():
    rgb = np.array([[[0, 0, 0], [1, 0, 0]], [[0, 1, 0], [3, 2, 1]]], np.uint8)
    np.testing.assert_array_equal(rgb_to_id(rgb), [[0, 1], [256, 3 + 512 + 65536]])
    ids = np.random.default_rng(0).integers(0, 256 ** 3, (7, 5))
    np.testing.assert_array_equal(rgb_to_id(id_to_rgb(ids)), ids)


def test_out_of_range_ids_are_refused():
    with pytest.raises(ValueError, match="segment ids"):
        id_to_rgb(np.array([256 ** 3]))
