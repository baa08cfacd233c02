"""Tests for detr_jax.ops.box_ops (hand-worked values, properties, degenerate boxes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detr_jax.ops.box_ops import (
    box_area,
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    elementwise_giou,
    pairwise_giou,
    pairwise_iou,
)

# (a, b, iou, giou), all xyxy; arithmetic in the comments.
HAND_CASES = [
    # overlap of a 1x1 corner: inter = 1*1 = 1, union = 4 + 4 - 1 = 7, iou = 1/7;
    # enclosing box [0,0,3,3] has area 9 -> giou = 1/7 - (9 - 7)/9 = 1/7 - 2/9 = -5/63.
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, -5 / 63),
    # disjoint unit squares 1 apart: inter = 0, union = 2, enclose = 3*1 = 3
    # -> iou = 0, giou = 0 - (3 - 2)/3 = -1/3.
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1 / 3),
    # b inside a: inter = 1, union = 16, enclose = a -> iou = giou = 1/16.
    ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16, 1 / 16),
    # identical boxes: iou = giou = 1.
    ([0.1, 0.2, 0.5, 0.7], [0.1, 0.2, 0.5, 0.7], 1.0, 1.0),
    # side-by-side halves: inter = 1*1, union = 2 + 2 - 1 = 3, enclose = 3*1 = 3
    # -> iou = 1/3, giou = 1/3 - 0 = 1/3.
    ([0, 0, 2, 1], [1, 0, 3, 1], 1 / 3, 1 / 3),
    # far apart: a=[0,0,1,1], b=[9,9,10,10]: inter = 0, union = 2, enclose = 100
    # -> giou = -(100 - 2)/100 = -0.98.
    ([0, 0, 1, 1], [9, 9, 10, 10], 0.0, -0.98),
]


@pytest.mark.parametrize("a,b,iou,giou", HAND_CASES)
def test_hand_worked_values(a, b, iou, giou):
    a = jnp.asarray([a], jnp.float32)
    b = jnp.asarray([b], jnp.float32)
    got_iou, union = pairwise_iou(a, b)
    np.testing.assert_allclose(got_iou[0, 0], iou, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(pairwise_giou(a, b)[0, 0], giou, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(elementwise_giou(a[0], b[0]), giou, rtol=1e-6, atol=1e-7)
    # union = area_a + area_b - inter
    inter = iou * float(union[0, 0])
    np.testing.assert_allclose(union[0, 0], box_area(a)[0] + box_area(b)[0] - inter, rtol=1e-6)


def test_conversions_hand_values():
    # cxcywh (0.5, 0.5, 0.2, 0.4) -> x0 = 0.5 - 0.1, y0 = 0.5 - 0.2, x1 = 0.6, y1 = 0.7
    np.testing.assert_allclose(
        box_cxcywh_to_xyxy(jnp.array([0.5, 0.5, 0.2, 0.4])), [0.4, 0.3, 0.6, 0.7], atol=1e-7
    )
    # xyxy (10, 20, 30, 60) -> centre (20, 40), size (20, 40)
    np.testing.assert_allclose(box_xyxy_to_cxcywh(jnp.array([10.0, 20, 30, 60])), [20, 40, 20, 40])
    # area of (10, 20, 30, 60) = 20 * 40
    assert float(box_area(jnp.array([10.0, 20, 30, 60]))) == 800.0


def test_pairwise_shapes_and_batching():
    rng = np.random.default_rng(0)
    a = box_cxcywh_to_xyxy(jnp.asarray(rng.uniform(0.1, 0.9, (5, 2, 4)), jnp.float32))
    b = box_cxcywh_to_xyxy(jnp.asarray(rng.uniform(0.1, 0.9, (5, 3, 4)), jnp.float32))
    iou, union = pairwise_iou(a, b)
    giou = pairwise_giou(a, b)
    assert iou.shape == union.shape == giou.shape == (5, 2, 3)
    # batched result equals per-pair elementwise results
    for n in range(2):
        for m in range(3):
            np.testing.assert_allclose(giou[:, n, m], elementwise_giou(a[:, n], b[:, m]), rtol=1e-6)
    # vmap agrees with leading-dim broadcasting
    np.testing.assert_allclose(jax.vmap(pairwise_giou)(a, b), giou, rtol=1e-6)


def _boxes_xyxy(n: int):
    """Hypothesis strategy: [n, 4] proper xyxy boxes from (x, y, w, h) in a 0..10 square."""
    coords = hnp.arrays(
        np.float32, (n, 4), elements=st.floats(0.0, 10.0, width=32, allow_subnormal=False)
    )
    return coords.map(lambda c: np.concatenate([c[:, :2], c[:, :2] + c[:, 2:]], axis=1))


_jit_pair = jax.jit(lambda a, b: (pairwise_iou(a, b)[0], pairwise_giou(a, b)))


@settings(max_examples=60, deadline=None)
@given(a=_boxes_xyxy(4), b=_boxes_xyxy(3))
def test_properties(a, b):
    iou, giou = map(np.asarray, _jit_pair(a, b))
    assert np.all(np.isfinite(iou)) and np.all(np.isfinite(giou))
    assert np.all((iou >= 0) & (iou <= 1))
    assert np.all((giou >= -1) & (giou <= 1))
    assert np.all(giou <= iou + 1e-6)
    # symmetry
    iou_t, giou_t = map(np.asarray, _jit_pair(b, a))
    np.testing.assert_allclose(iou_t.T, iou, atol=1e-6)
    np.testing.assert_allclose(giou_t.T, giou, atol=1e-6)
    # self-IoU is 1 for boxes with positive area
    self_iou, _ = map(np.asarray, _jit_pair(a, a))
    pos = np.asarray(box_area(a)) > 1e-3
    np.testing.assert_allclose(np.diag(self_iou)[pos], 1.0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    outer=_boxes_xyxy(1),
    frac=hnp.arrays(np.float32, (4,), elements=st.floats(0.0, 1.0, width=32)),
)
def test_giou_equals_iou_when_contained(outer, frac):
    outer = outer[0]
    w, h = outer[2] - outer[0], outer[3] - outer[1]
    # inner box built from fractions of the outer box, so it lies inside it
    fx0, fx1 = sorted(frac[:2])
    fy0, fy1 = sorted(frac[2:])
    inner = np.array(
        [outer[0] + fx0 * w, outer[1] + fy0 * h, outer[0] + fx1 * w, outer[1] + fy1 * h],
        np.float32,
    )
    inner = np.clip(inner, np.concatenate([outer[:2]] * 2), np.concatenate([outer[2:]] * 2))
    iou, giou = map(np.asarray, _jit_pair(outer[None], inner[None]))
    np.testing.assert_allclose(giou, iou, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(boxes=hnp.arrays(np.float32, (6, 4), elements=st.floats(0.0625, 1.0, width=32)))
def test_conversion_round_trip(boxes):
    np.testing.assert_allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes, atol=1e-6)
    xyxy = np.asarray(box_cxcywh_to_xyxy(boxes))
    np.testing.assert_allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-6)


DEGENERATE = np.array(
    [
        [0.0, 0.0, 0.0, 0.0],  # all zeros
        [0.5, 0.5, 0.5, 0.5],  # point
        [0.2, 0.3, 0.2, 0.8],  # zero width line
        [0.2, 0.3, 0.7, 0.3],  # zero height line
        [0.8, 0.8, 0.2, 0.2],  # inverted (x1 < x0, y1 < y0)
        [0.6, 0.1, 0.3, 0.9],  # inverted in x only
        [0.1, 0.1, 0.4, 0.4],  # ordinary box
    ],
    np.float32,
)


def test_degenerate_boxes_finite_values():
    iou, union = pairwise_iou(DEGENERATE, DEGENERATE)
    giou = pairwise_giou(DEGENERATE, DEGENERATE)
    for x in (iou, union, giou):
        assert np.all(np.isfinite(np.asarray(x)))
    assert np.all((np.asarray(iou) >= 0) & (np.asarray(iou) <= 1))
    assert np.all((np.asarray(giou) >= -1) & (np.asarray(giou) <= 1))
    # inverted boxes have zero area
    np.testing.assert_array_equal(np.asarray(box_area(DEGENERATE))[:6], 0.0)
    # a zero-area box overlaps nothing
    np.testing.assert_array_equal(np.asarray(iou)[:6, 6], 0.0)


def test_degenerate_boxes_finite_gradients_under_jit():
    def f_pair(a, b):
        iou, union = pairwise_iou(a, b)
        return jnp.sum(iou) + jnp.sum(pairwise_giou(a, b)) + 1e-3 * jnp.sum(union)

    def f_elem(a, b):
        return jnp.sum(elementwise_giou(a, b))

    a = jnp.asarray(DEGENERATE)
    b = jnp.asarray(DEGENERATE[::-1].copy())
    for f in (f_pair, f_elem):
        ga, gb = jax.jit(jax.grad(f, argnums=(0, 1)))(a, b)
        assert np.all(np.isfinite(np.asarray(ga))) and np.all(np.isfinite(np.asarray(gb)))
        ga, gb = jax.jit(jax.grad(f, argnums=(0, 1)))(a, a)
        assert np.all(np.isfinite(np.asarray(ga))) and np.all(np.isfinite(np.asarray(gb)))
    # cxcywh with zero / negative sizes through the conversion
    cxcywh = jnp.array([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, -0.1, 0.2], [0.3, 0.3, 0.2, 0.2]])
    g = jax.jit(
        jax.grad(lambda x: jnp.sum(pairwise_giou(box_cxcywh_to_xyxy(x), box_cxcywh_to_xyxy(x))))
    )(cxcywh)
    assert np.all(np.isfinite(np.asarray(g)))


def test_giou_gradient_matches_finite_difference():
    a = jnp.array([0.1, 0.2, 0.6, 0.7])
    b = jnp.array([0.3, 0.1, 0.8, 0.5])
    grad = np.asarray(jax.grad(lambda x: elementwise_giou(x, b))(a))
    eps = 1e-3
    num = []
    for i in range(4):
        d = np.zeros(4, np.float32)
        d[i] = eps
        num.append(
            (float(elementwise_giou(a + d, b)) - float(elementwise_giou(a - d, b))) / (2 * eps)
        )
    np.testing.assert_allclose(grad, num, rtol=1e-2, atol=1e-3)
