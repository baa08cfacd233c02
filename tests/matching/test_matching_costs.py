"""Tests of the matching-cost registry: ``COST_TERMS``, ``matching_cost`` and ``detr_cost``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from detr_jax.matching import (
    COST_TERMS,
    DETR_COST_WEIGHTS,
    check_cost_weights,
    cost_term_settings,
    detr_cost,
    matching_cost,
)
from detr_jax.matching._common import sanitize
from detr_jax.matching.cost_terms import cost_term_inputs
from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, pairwise_giou


def reference_detr_cost(
    pred_logits, pred_boxes, gt_labels, gt_boxes, gt_valid,
    cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, query_valid=None,
):  # fmt: skip
    """``detr_cost`` as it was before the term registry (copied verbatim, the reference)."""
    logits = jax.lax.stop_gradient(jnp.asarray(pred_logits, jnp.float32))
    boxes = jax.lax.stop_gradient(jnp.asarray(pred_boxes, jnp.float32))
    tgt_boxes = jax.lax.stop_gradient(jnp.asarray(gt_boxes, jnp.float32))
    num_logits = logits.shape[-1]
    labels = jnp.clip(jnp.asarray(gt_labels, jnp.int32), 0, num_logits - 1)

    prob = jax.nn.softmax(logits, axis=-1)  # [B, Q, C+1]
    idx = jnp.broadcast_to(labels[:, None, :], prob.shape[:-1] + labels.shape[-1:])
    class_term = -jnp.take_along_axis(prob, idx, axis=-1)  # [B, Q, G]

    bbox_term = jnp.sum(jnp.abs(boxes[:, :, None, :] - tgt_boxes[:, None, :, :]), axis=-1)
    giou_term = -pairwise_giou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))

    cost = cost_class * class_term + cost_bbox * bbox_term + cost_giou * giou_term
    cost = cost.astype(jnp.float32)
    if query_valid is not None:
        cost = jnp.where(jnp.asarray(query_valid, bool)[:, :, None], cost, jnp.inf)
    return jax.lax.stop_gradient(sanitize(cost, jnp.asarray(gt_valid, bool)))


def problem(seed: int, batch=3, num_q=30, num_g=9, num_logits=92, nonfinite=False):
    """Random DETR-like inputs: logits [B,Q,K], boxes cxcywh [B,Q,4], labels, GT, masks."""
    rng = np.random.default_rng(seed)
    logits = (3 * rng.normal(size=(batch, num_q, num_logits))).astype(np.float32)
    boxes = np.concatenate(
        [rng.uniform(0.1, 0.9, (batch, num_q, 2)), rng.uniform(0.02, 0.6, (batch, num_q, 2))], -1
    ).astype(np.float32)
    gt = np.concatenate(
        [rng.uniform(0.1, 0.9, (batch, num_g, 2)), rng.uniform(0.02, 0.6, (batch, num_g, 2))], -1
    ).astype(np.float32)
    labels = rng.integers(0, num_logits - 1, (batch, num_g)).astype(np.int32)
    labels[0, -1] = 1000  # out of range at a padding slot: clipped
    valid = rng.random((batch, num_g)) < 0.7
    valid[0, -1] = False
    query_valid = rng.random((batch, num_q)) < 0.9
    if nonfinite:
        logits[1, 2, 5] = np.nan
        boxes[2, 3, 0] = np.inf
    return logits, boxes, labels, gt, valid, query_valid


def bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("weights", [(1.0, 5.0, 2.0), (2.0, 5.0, 2.0), (1.5, 4.0, 3.0)])
def test_detr_cost_is_bitwise_the_former_formula(weights, nonfinite):
    logits, boxes, labels, gt, valid, qv = problem(0, nonfinite=nonfinite)
    for query_valid in (None, qv):
        args = (logits, boxes, labels, gt, valid, *weights)
        ref = reference_detr_cost(*args, query_valid=query_valid)
        np.testing.assert_array_equal(bits(detr_cost(*args, query_valid=query_valid)), bits(ref))
        jit_ref = jax.jit(reference_detr_cost)(*args, query_valid=query_valid)
        jit_new = jax.jit(detr_cost)(*args, query_valid=query_valid)
        np.testing.assert_array_equal(bits(jit_new), bits(jit_ref))
    # default weights through matching_cost, and the same traced program
    args = (logits, boxes, labels, gt, valid)
    np.testing.assert_array_equal(
        bits(matching_cost(*args, DETR_COST_WEIGHTS, qv)),
        bits(reference_detr_cost(*args, query_valid=qv)),
    )
    same = str(jax.make_jaxpr(lambda *a: detr_cost(*a, *weights, query_valid=qv))(*args))
    assert same == str(jax.make_jaxpr(lambda *a: reference_detr_cost(*a, *weights, qv))(*args))


def numpy_focal(logits, labels, alpha=0.25, gamma=2.0, eps=1e-8, exact_sigmoid=False):
    """Deformable-DETR / DINO formula in float64: pos/neg on every class, then gather.

    The probabilities are JAX's float32 sigmoid (so the comparison checks the formula:
    ``-log(1 - p)`` amplifies p's float32 rounding by ``1 / (1 - p)``), or with
    ``exact_sigmoid`` the float64 one.
    """
    if exact_sigmoid:
        prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))  # [B, Q, C]
    else:
        prob = np.asarray(jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)), np.float64)
    neg = (1 - alpha) * prob**gamma * -np.log(1 - prob + eps)
    pos = alpha * (1 - prob) ** gamma * -np.log(prob + eps)
    labels = np.clip(labels, 0, logits.shape[-1] - 1)
    return np.stack([pos[b][:, labels[b]] - neg[b][:, labels[b]] for b in range(len(logits))])


def test_focal_class_term_against_numpy():
    logits, boxes, labels, gt, *_ = problem(1, num_logits=80)  # C = 80, no no-object column
    got = np.asarray(COST_TERMS["focal_class"](logits, boxes, labels, gt))
    assert got.dtype == np.float32 and got.shape == (3, 30, 9)
    np.testing.assert_allclose(got, numpy_focal(logits, labels), rtol=1e-5, atol=1e-6)
    exact = numpy_focal(logits, labels, exact_sigmoid=True)
    np.testing.assert_allclose(got, exact, rtol=1e-3, atol=1e-6)
    got = COST_TERMS["focal_class"](logits, boxes, labels, gt, alpha=0.4, gamma=1.5)
    want = numpy_focal(logits, labels, alpha=0.4, gamma=1.5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # a hand-computed entry: logit 0 -> p = 0.5
    one = COST_TERMS["focal_class"](np.zeros((1, 1, 2)), np.zeros((1, 1, 4)), [[1]], [[[0.0] * 4]])
    p = 0.5
    hand = 0.25 * (1 - p) ** 2 * -np.log(p + 1e-8) - 0.75 * p**2 * -np.log(1 - p + 1e-8)
    np.testing.assert_allclose(float(one[0, 0, 0]), hand, rtol=1e-6)


def test_matching_cost_with_focal_and_settings():
    logits, boxes, labels, gt, valid, qv = problem(2, num_logits=20)
    weights = {"focal_class": {"weight": 2.0, "alpha": 0.3}, "bbox": 5.0, "giou": 2}
    got = np.asarray(matching_cost(logits, boxes, labels, gt, valid, weights, query_valid=qv))
    terms = {n: np.asarray(COST_TERMS[n](logits, boxes, labels, gt)) for n in ("bbox", "giou")}
    want = 2.0 * numpy_focal(logits, labels, alpha=0.3) + 5.0 * terms["bbox"] + 2 * terms["giou"]
    keep = valid[:, None, :] & qv[:, :, None]
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[~np.broadcast_to(valid[:, None, :], got.shape)], 0.0)
    # excluded queries cost more than any valid one (the sanitize penalty)
    for b in range(len(got)):
        sub = got[b][:, valid[b]]
        assert (~qv[b]).any() and sub[~qv[b]].min() > sub[qv[b]].max()
    # a ConfigDict works as the weights mapping, nested entries included
    cfg = ml_collections.ConfigDict(
        {"focal_class": {"weight": 2.0, "alpha": 0.3}, "bbox": 5.0, "giou": 2}
    )
    np.testing.assert_array_equal(
        np.asarray(matching_cost(logits, boxes, labels, gt, valid, cfg, qv)), got
    )
    # no gradient flows through the cost
    grad = jax.grad(lambda x: jnp.sum(matching_cost(x, boxes, labels, gt, valid, weights)))(logits)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_term_registry_and_settings():
    assert set(COST_TERMS) == {"class", "focal_class", "bbox", "giou", "mask", "mask_focal",
                               "dice"}
    assert cost_term_settings("focal_class") == ("alpha", "gamma", "eps")
    assert cost_term_settings("class") == ()
    logits, boxes, labels, gt, *_ = problem(3)
    for name, term in COST_TERMS.items():
        if cost_term_inputs(name):  # mask terms: tests/matching/test_mask_costs.py
            continue
        out = term(logits, boxes, labels, gt)
        assert out.shape == (3, 30, 9) and out.dtype == jnp.float32, name
    parsed = check_cost_weights({"giou": 2.0, "focal_class": {"weight": 1.0, "gamma": 1.0}})
    assert parsed == {"giou": (2.0, {}), "focal_class": (1.0, {"gamma": 1.0})}
    assert list(parsed) == ["giou", "focal_class"]  # summation order = mapping order


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"class": 1.0, "iou": 2.0}, r"unknown matching cost term 'iou'.*'bbox'.*'giou'"),
        ({"focal_class": {"weight": 1.0, "beta": 2.0}}, r"'focal_class'.*'beta'.*'alpha'"),
        ({"focal_class": {"alpha": 0.5}}, r"'focal_class'.*needs a 'weight'"),
        ({"bbox": "five"}, r"'bbox': weight must be a number"),
        ({}, r"non-empty mapping"),
    ],
)
def test_bad_weights_raise(weights, match):
    logits, boxes, labels, gt, valid, _ = problem(4)
    with pytest.raises(ValueError, match=match):
        matching_cost(logits, boxes, labels, gt, valid, weights)
    with pytest.raises(ValueError, match=match):
        check_cost_weights(weights)
    with pytest.raises(ValueError, match="unknown matching cost term 'nope'"):
        cost_term_settings("nope")
