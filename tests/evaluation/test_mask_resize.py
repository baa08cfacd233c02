"""The numpy mask resizes against PyTorch's F.interpolate (bilinear, nearest-exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detr_jax.evaluation.mask_resize import resize_bilinear, resize_nearest

SIZES = [((8, 8), (32, 32)), ((13, 7), (5, 11)), ((6, 10), (6, 10)), ((9, 4), (30, 3))]


@pytest.mark.parametrize("src, dst", SIZES)
def test_bilinear_is_torch_align_corners_false(src, dst):
    x = np.random.default_rng(0).normal(size=(3, *src)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear",
                         align_corners=False)[0].numpy()
    got = resize_bilinear(x, dst)
    assert got.shape == (3, *dst) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("src, dst", SIZES)
def test_nearest_is_torch_nearest_exact(src, dst):
    x = np.random.default_rng(1).integers(0, 1000, (2, *src)).astype(np.int32)
    want = F.interpolate(torch.from_numpy(x).double()[None], size=dst,
                         mode="nearest-exact")[0].numpy()
    got = resize_nearest(x, dst)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="cannot resize"):
        resize_nearest(np.zeros((4, 4)), (0, 3))
