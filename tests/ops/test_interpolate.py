"""`resize_bilinear` against PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`
(no antialiasing), up and down, at uneven ratios, on both layouts it is used with."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detr_jax.ops.interpolate import resize_bilinear  # noqa: E402

SIZES = [((12, 15), (23, 30)), ((23, 30), (3, 4)), ((23, 30), (6, 8)), ((23, 30), (12, 15)),
         ((5, 7), (5, 7)), ((1, 3), (4, 2)), ((7, 5), (13, 2))]


@pytest.mark.parametrize("src,dst", SIZES)
def test_resize_bilinear_matches_torch(src, dst):
    x = np.random.default_rng(0).normal(size=(2, 3, *src)).astype(np.float32)  # [B, C, H, W]
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=dst, mode="bilinear",
                                           align_corners=False).numpy()
    got = np.asarray(resize_bilinear(x, dst))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 rounding order
    nhwc = np.asarray(resize_bilinear(np.transpose(x, (0, 2, 3, 1)), dst, axes=(1, 2)))
    np.testing.assert_allclose(np.transpose(nhwc, (0, 3, 1, 2)), want, atol=1e-5)


def test_resize_bilinear_refuses_integers_and_empty_sizes():
    with pytest.raises(TypeError, match="floating"):
        resize_bilinear(np.zeros((1, 4, 4), np.int32), (2, 2))
    with pytest.raises(ValueError, match="size 4 to 0"):
        resize_bilinear(np.zeros((1, 4, 4), np.float32), (0, 2))
