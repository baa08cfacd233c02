"""ops.ms_deform_attn against a direct loop of bilinear sampling (hand cases and random),
PyTorch's grid_sample, and finite-difference gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from detr_jax.ops.ms_deform_attn import ms_deform_attn

SHAPES = ((5, 7), (3, 4))


def loop_reference(value, shapes, loc, attn):
    """float64 loop: per (b, q, head, level, point), the four neighbours with zero padding."""
    value, loc, attn = (np.asarray(a, np.float64) for a in (value, loc, attn))
    b, _, heads, dh = value.shape
    lq = loc.shape[1]
    out = np.zeros((b, lq, heads, dh))
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    for bi in range(b):
        for q in range(lq):
            for hd in range(heads):
                for lvl, (h, w) in enumerate(shapes):
                    grid = value[bi, starts[lvl]:starts[lvl + 1], hd].reshape(h, w, dh)
                    for p in range(loc.shape[4]):
                        x = loc[bi, q, hd, lvl, p, 0] * w - 0.5
                        y = loc[bi, q, hd, lvl, p, 1] * h - 0.5
                        x0, y0 = int(np.floor(x)), int(np.floor(y))
                        acc = np.zeros(dh)
                        for yy in (y0, y0 + 1):
                            for xx in (x0, x0 + 1):
                                if 0 <= yy < h and 0 <= xx < w:
                                    acc += (1 - abs(x - xx)) * (1 - abs(y - yy)) * grid[yy, xx]
                        out[bi, q, hd] += attn[bi, q, hd, lvl, p] * acc
    return out.reshape(b, lq, heads * dh)


def random_inputs(seed=0, b=2, lq=3, heads=2, dh=4, points=3, lo=-0.2, hi=1.2):
    rng = np.random.default_rng(seed)
    n = sum(h * w for h, w in SHAPES)
    value = rng.normal(size=(b, n, heads, dh)).astype(np.float32)
    loc = rng.uniform(lo, hi, size=(b, lq, heads, len(SHAPES), points, 2)).astype(np.float32)
    attn = rng.uniform(size=(b, lq, heads, len(SHAPES), points)).astype(np.float32)
    attn /= attn.sum(axis=(3, 4), keepdims=True)
    return value, loc, attn


def one_point(x, y, shapes=((4, 6),)):
    """A single query/head/level/point at (x, y) with weight 1 over a value ramp."""
    h, w = shapes[0]
    value = (np.arange(h * w, dtype=np.float32) + 1.0).reshape(1, h * w, 1, 1)
    loc = np.array([x, y], np.float32).reshape(1, 1, 1, 1, 1, 2)
    attn = np.ones((1, 1, 1, 1, 1), np.float32)
    return value, loc, attn, shapes


def test_hand_cases_centre_border_outside_and_padding():
    h, w = 4, 6
    ramp = np.arange(h * w, dtype=np.float32).reshape(h, w) + 1.0
    # A pixel centre reads that pixel exactly.
    v, loc, a, s = one_point((2 + 0.5) / w, (1 + 0.5) / h)
    assert float(ms_deform_attn(v, s, loc, a)[0, 0, 0]) == pytest.approx(ramp[1, 2])
    # The left border (x = 0) is half a pixel outside pixel 0: half of it, half zero padding.
    v, loc, a, s = one_point(0.0, (1 + 0.5) / h)
    assert float(ms_deform_attn(v, s, loc, a)[0, 0, 0]) == pytest.approx(0.5 * ramp[1, 0])
    # The top-left corner: a quarter of pixel (0, 0).
    v, loc, a, s = one_point(0.0, 0.0)
    assert float(ms_deform_attn(v, s, loc, a)[0, 0, 0]) == pytest.approx(0.25 * ramp[0, 0])
    # Outside the map: zeros.
    for x, y in ((1.5, 0.5), (-0.6, 0.5), (0.5, 1.2)):
        v, loc, a, s = one_point(x, y)
        assert float(ms_deform_attn(v, s, loc, a)[0, 0, 0]) == 0.0
    # Padded region (columns 4, 5 zeroed, as the caller masks padded values): on the real
    # region's right edge a point reads half the last real column.
    v, loc, a, s = one_point(4.0 / w, (2 + 0.5) / h)
    v = v.reshape(h, w).copy()
    v[:, 4:] = 0.0
    out = ms_deform_attn(v.reshape(1, h * w, 1, 1), s, loc, a)
    assert float(out[0, 0, 0]) == pytest.approx(0.5 * ramp[2, 3])


def test_matches_the_loop_reference_in_and_outside_the_maps():
    value, loc, attn = random_inputs()
    out = jax.jit(ms_deform_attn, static_argnums=1)(value, SHAPES, loc, attn)
    np.testing.assert_allclose(out, loop_reference(value, SHAPES, loc, attn), atol=1e-5)


def test_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    value, loc, attn = random_inputs(seed=1, b=2, lq=5, heads=3, dh=8, points=4)
    b, _, heads, dh = value.shape
    lq, levels, points = loc.shape[1], loc.shape[3], loc.shape[4]
    v_t, loc_t = torch.from_numpy(value), torch.from_numpy(loc)
    sampled, start = [], 0
    for lvl, (h, w) in enumerate(SHAPES):
        v_l = v_t[:, start:start + h * w].permute(0, 2, 3, 1).reshape(b * heads, dh, h, w)
        start += h * w
        grid = (2 * loc_t[:, :, :, lvl] - 1).permute(0, 2, 1, 3, 4).reshape(b * heads, lq,
                                                                           points, 2)
        sampled.append(F.grid_sample(v_l, grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [B*H, Dh, Lq, P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*H, Dh, Lq, L*P]
    w_t = torch.from_numpy(attn).permute(0, 2, 1, 3, 4).reshape(b * heads, 1, lq,
                                                                 levels * points)
    ref = (stacked * w_t).sum(-1).view(b, heads * dh, lq).transpose(1, 2)
    out = ms_deform_attn(value, SHAPES, loc, attn)
    np.testing.assert_allclose(out, ref.numpy(), atol=1e-5)


def test_gradients_match_finite_differences():
    # Locations away from integer pixel coordinates (where bilinear sampling has kinks).
    value, loc, attn = random_inputs(seed=2, b=1, lq=2, heads=2, dh=3, points=2, lo=0.05,
                                     hi=0.95)
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in (value, loc, attn)]
        fn = lambda v, s, a: ms_deform_attn(v, SHAPES, s, a)
        check_grads(fn, args, order=1, modes=("rev",), eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [5, 16, 64])
def test_query_chunks_give_the_same_values_and_gradients(chunk):
    """Chunked sampling (the last chunk padded) equals one pass, forward and backward."""
    shapes = ((6, 7), (3, 4))
    n = sum(h * w for h, w in shapes)
    rng = np.random.default_rng(0)
    b, lq, heads, dh, points = 2, 23, 2, 3, 2
    value = jnp.asarray(rng.normal(size=(b, n, heads, dh)), jnp.float32)
    loc = jnp.asarray(rng.uniform(-0.1, 1.1, (b, lq, heads, 2, points, 2)), jnp.float32)
    w = jax.nn.softmax(jnp.asarray(rng.normal(size=(b, lq, heads, 2, points)), jnp.float32))

    def loss(v, lo, ww, c):
        return jnp.sum(jnp.sin(ms_deform_attn(v, shapes, lo, ww, c)))

    full = jax.value_and_grad(loss, argnums=(0, 1, 2))(value, loc, w, 0)
    chunked = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)(
        value, loc, w, chunk)
    np.testing.assert_allclose(chunked[0], full[0], rtol=1e-5)
    for a, c in zip(full[1], chunked[1], strict=True):
        np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-6)
