"""detr_jax.ops.point_sample against torch's grid_sample (through HF Mask2Former's
`sample_point`) and HF's importance sampling on the same random draws, plus hand cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.models.mask2former import modeling_mask2former as m2f  # noqa: E402

from detr_jax.ops.point_sample import (  # noqa: E402
    point_sample,
    random_candidates,
    stride_scale,
    uncertainty_points,
)


def torch_sample(values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """HF's sample_point (grid_sample on 2 * p - 1, align_corners=False, zero padding)."""
    x = torch.from_numpy(np.asarray(values, np.float32))
    squeeze = x.ndim == 3
    x = x[:, None] if squeeze else x
    out = m2f.sample_point(x, torch.from_numpy(points), align_corners=False).numpy()
    return out[:, 0] if squeeze else out


def test_point_sample_matches_grid_sample():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
    # inside, on the borders and corners, and outside [0, 1] (zero padding)
    points = rng.uniform(-0.15, 1.15, size=(3, 60, 2)).astype(np.float32)
    points[:, :6] = np.array([[0, 0], [1, 1], [0, 1], [1, 0], [0.5, 0], [1, 0.5]], np.float32)
    got = np.asarray(point_sample(jnp.asarray(values), jnp.asarray(points)))
    want = torch_sample(values, points)
    assert np.abs(want).max() > 1.0  # the reference really varies
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_point_sample_channels_and_uint8():
    """[N, C, h, w] shares the points across C; uint8 masks are sampled as 0/1 floats."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    points = rng.uniform(0, 1, size=(2, 30, 2)).astype(np.float32)
    got = np.asarray(point_sample(jnp.asarray(values), jnp.asarray(points)))
    assert got.shape == (2, 4, 30)
    np.testing.assert_allclose(got, torch_sample(values, points), rtol=1e-5, atol=1e-5)
    masks = (rng.uniform(size=(2, 6, 5)) > 0.5).astype(np.uint8)
    got = np.asarray(point_sample(jnp.asarray(masks), jnp.asarray(points)))
    np.testing.assert_allclose(got, torch_sample(masks.astype(np.float32), points), atol=1e-6)


def test_point_sample_gradient_matches_torch():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(2, 4, 6)).astype(np.float32)
    points = rng.uniform(-0.1, 1.1, size=(2, 40, 2)).astype(np.float32)
    weights = rng.normal(size=(2, 40)).astype(np.float32)
    grad = jax.grad(lambda v: jnp.sum(point_sample(v, jnp.asarray(points)) * weights))(
        jnp.asarray(values))
    x = torch.from_numpy(values)[:, None].requires_grad_(True)
    (m2f.sample_point(x, torch.from_numpy(points), align_corners=False)[:, 0]
     * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(np.asarray(grad), x.grad[:, 0].numpy(), rtol=1e-5, atol=1e-5)


def test_uncertainty_points_match_hf_on_same_draws(monkeypatch):
    """HF's sample_points_using_uncertainty, its two torch.rand draws replaced by ours."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 6, 8)).astype(np.float32) * 4
    key = jax.random.PRNGKey(7)
    num_points, ratio, importance = 40, 3.0, 0.75
    cand, fill = random_candidates(key, 4, num_points, ratio, importance)
    draws = [torch.from_numpy(np.array(cand)), torch.from_numpy(np.array(fill))]

    def fake_rand(*shape, **kwargs):
        out = draws.pop(0)
        assert tuple(out.shape) == tuple(shape)
        return out

    monkeypatch.setattr(torch, "rand", fake_rand)
    want = m2f.Mask2FormerLoss.sample_points_using_uncertainty(
        None, torch.from_numpy(logits)[:, None], lambda x: -torch.abs(x), num_points, ratio,
        importance).numpy()
    assert not draws
    got = np.asarray(uncertainty_points(jnp.asarray(logits), key, num_points, ratio, importance))
    assert got.shape == (4, num_points, 2)
    np.testing.assert_array_equal(got, want)


def test_uncertainty_points_picks_the_uncertain_region():
    """Logits 0 on one column band and +-20 elsewhere: all importance points land in the band."""
    logits = np.full((1, 8, 8), 20.0, np.float32)
    logits[0, :, 3:5] = 0.0  # pixel columns 3, 4: x in [3/8, 5/8]
    pts = np.asarray(uncertainty_points(jnp.asarray(logits), jax.random.PRNGKey(0), 32, 8.0,
                                        0.5))
    band = pts[0, :16, 0]
    assert np.all((band > 2.5 / 8) & (band < 5.5 / 8)), band


def test_uncertainty_points_bad_settings():
    x = jnp.zeros((1, 4, 4))
    with pytest.raises(ValueError, match="oversample_ratio"):
        uncertainty_points(x, jax.random.PRNGKey(0), 8, 0.5, 0.5)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        uncertainty_points(x, jax.random.PRNGKey(0), 8, 2.0, 1.5)
    with pytest.raises(ValueError, match="num_points"):
        uncertainty_points(x, jax.random.PRNGKey(0), 0, 2.0, 0.5)


def test_stride_scale_keeps_the_canvas_position():
    """A stride-4 ramp whose pixel i holds its canvas centre 4i + 1.5: sampling it at
    `p * stride_scale` reads the canvas coordinate p * W - 0.5 (interior points), also on a
    canvas that is not a multiple of 4."""
    big_w, w = 30, 8
    ramp = np.broadcast_to(4 * np.arange(w, dtype=np.float32) + 1.5, (1, 3, w))
    scale = stride_scale((3, w), (9, big_w))
    np.testing.assert_allclose(np.asarray(scale), [30 / 32, 9 / 12])
    x = np.linspace(2.5 / big_w, (big_w - 2.5) / big_w, 11, dtype=np.float32)
    pts = np.stack([x, np.full_like(x, 0.5)], -1)[None]
    got = np.asarray(point_sample(jnp.asarray(ramp), jnp.asarray(pts) * scale))[0]
    np.testing.assert_allclose(got, x * big_w - 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="not at stride 4"):
        stride_scale((9, 30), (9, 30))
