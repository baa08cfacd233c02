"""Tests of the set criterion (detr_jax.losses.Criterion, DETR's terms and weights) against hand
/ numpy computations."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.config_base import base_config
from detr_jax.losses import LOSS_TERMS, Criterion, build_criterion
from detr_jax.matching import HungarianScipyMatcher, Matcher

DETR_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
DETR_COSTS = {"class": 1.0, "bbox": 5.0, "giou": 2.0}


def make_criterion(matcher, eos_coef=0.1, label_smoothing=0.0, aux_loss=True):
    """DETR's criterion (labels, boxes, cardinality; weights 1 / 5 / 2, costs 1 / 5 / 2)."""
    terms = {"labels": {"eos_coef": eos_coef, "label_smoothing": label_smoothing},
             "boxes": {}, "cardinality": {}}
    return Criterion(terms, DETR_WEIGHTS, LOSS_TERMS, matcher, DETR_COSTS, aux_loss)


@functools.cache
def _jitted(matcher, eos_coef, label_smoothing, aux_loss):
    # Jitted once per (shapes, options): much faster than eager op-by-op dispatch.
    criterion = make_criterion(matcher, eos_coef, label_smoothing, aux_loss)
    return jax.jit(lambda o, b, qv, match: criterion(o, b, query_valid=qv, match=match))


def detr_loss(outputs, batch, matcher, *, eos_coef=0.1, label_smoothing=0.0, aux_loss=True,
              match=None, query_valid=None):
    """The jitted criterion with DETR's terms, on `outputs` and `batch`."""
    return _jitted(matcher, eos_coef, label_smoothing, aux_loss)(outputs, batch, query_valid,
                                                                 match)

MATCHER = HungarianScipyMatcher()
NUM_CLASSES = 2  # logits have 3 entries, index 2 = no object

# One image, Q=3 queries, G=3 slots of which 2 are valid.
LOGITS = np.array(
    [
        [2.0, 0.0, 0.0],  # q0: predicts class 0
        [0.0, 0.0, 3.0],  # q1: predicts no object
        [0.0, 1.5, 2.0],  # q2: argmax no object, but class 1 is second
    ],
    np.float32,
)
PRED = np.array(
    [[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.1, 0.1], [0.6, 0.4, 0.2, 0.4]], np.float32
)  # cxcywh
GT_BOXES = np.array([[0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.2, 0.4], [0, 0, 0, 0]], np.float32)
GT_LABELS = np.array([0, 1, 0], np.int32)
GT_VALID = np.array([True, True, False])


def make_inputs(num_layers=1):
    outputs = {
        "pred_logits": jnp.asarray(np.broadcast_to(LOGITS, (num_layers, 1, 3, 3))),
        "pred_boxes": jnp.asarray(np.broadcast_to(PRED, (num_layers, 1, 3, 4))),
    }
    batch = {
        "labels": jnp.asarray(GT_LABELS[None]),
        "boxes": jnp.asarray(GT_BOXES[None]),
        "box_valid": jnp.asarray(GT_VALID[None]),
    }
    return outputs, batch


def np_log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_hand_computed_example():
    outputs, batch = make_inputs()
    # Matching by brute force on the numpy DETR cost (class 1, L1 5, GIoU 2): the only
    # sensible assignment is g0 -> q0 (identical box, class 0) and g1 -> q2.
    prob = np.exp(np_log_softmax(LOGITS))
    best = min(
        itertools.permutations(range(3), 2),
        key=lambda p: sum(
            -prob[q, GT_LABELS[g]] + 5 * np.abs(PRED[q] - GT_BOXES[g]).sum()
            for q, g in zip(p, (0, 1), strict=True)
        ),
    )
    assert best == (0, 2)

    # CE targets: q0 -> 0, q1 -> 2 (no object, weight eos=0.1), q2 -> 1.
    logp = np_log_softmax(LOGITS)
    ce = -np.array([logp[0, 0], logp[1, 2], logp[2, 1]])
    w = np.array([1.0, 0.1, 1.0])
    expected_ce = (w * ce).sum() / w.sum()
    # L1: q0/g0 identical -> 0; q2/g1: |0.6-0.5| + |0.4-0.5| + 0 + 0 = 0.2; / num_boxes 2.
    expected_l1 = 0.2 / 2
    # GIoU q2/g1: q2 xyxy [0.5,0.2,0.7,0.6], g1 xyxy [0.4,0.3,0.6,0.7];
    # inter = 0.1*0.3 = 0.03, union = 0.08+0.08-0.03 = 0.13, enclose = 0.3*0.5 = 0.15
    # giou = 3/13 - 0.02/0.15 = 3/13 - 2/15 = 19/195 -> 1 - giou = 176/195; q0/g0 -> 0.
    expected_giou = (176 / 195) / 2
    total, m = detr_loss(outputs, batch, MATCHER, eos_coef=0.1)
    np.testing.assert_allclose(m["loss_ce"], expected_ce, rtol=1e-5)
    np.testing.assert_allclose(m["loss_bbox"], expected_l1, rtol=1e-5)
    np.testing.assert_allclose(m["loss_giou"], expected_giou, rtol=1e-5)
    np.testing.assert_allclose(total, expected_ce + 5 * expected_l1 + 2 * expected_giou, rtol=1e-5)
    np.testing.assert_allclose(m["loss"], total)
    # class_error: q0 argmax 0 == 0 (right), q2 argmax 2 != 1 (wrong) -> 100 - 50 = 50.
    np.testing.assert_allclose(m["class_error"], 50.0)
    # cardinality: one query (q0) predicts an object, 2 GT -> |1 - 2| = 1.
    np.testing.assert_allclose(m["cardinality_error"], 1.0)
    np.testing.assert_allclose(m["num_boxes"], 2.0)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())


def test_label_smoothing():
    outputs, batch = make_inputs()
    alpha = 0.2
    logp = np_log_softmax(LOGITS)
    targets = np.eye(3)[[0, 2, 1]] * (1 - alpha) + alpha / 3  # optax.smooth_labels style
    ce = -(targets * logp).sum(-1)
    w = np.array([1.0, 0.1, 1.0])
    _, m = detr_loss(outputs, batch, MATCHER, label_smoothing=alpha)
    np.testing.assert_allclose(m["loss_ce"], (w * ce).sum() / w.sum(), rtol=1e-5)
    _, m0 = detr_loss(outputs, batch, MATCHER)
    assert not np.isclose(m["loss_ce"], m0["loss_ce"])
    np.testing.assert_allclose(m["loss_bbox"], m0["loss_bbox"])


def test_aux_layers_add_up():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 2, 5, 4)), jnp.float32)
    boxes = jnp.asarray(rng.uniform(0.2, 0.6, size=(2, 2, 5, 4)), jnp.float32)
    batch = {
        "labels": jnp.array([[0, 2, 1], [1, 0, 0]], jnp.int32),
        "boxes": jnp.asarray(rng.uniform(0.2, 0.6, size=(2, 3, 4)), jnp.float32),
        "box_valid": jnp.array([[True, True, True], [True, False, False]]),
    }
    total, m = detr_loss({"pred_logits": logits, "pred_boxes": boxes}, batch, MATCHER)
    singles = [
        detr_loss(
            {"pred_logits": logits[i : i + 1], "pred_boxes": boxes[i : i + 1]}, batch, MATCHER
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(total, singles[0][0] + singles[1][0], rtol=1e-6)
    for k in ("ce", "bbox", "giou"):
        np.testing.assert_allclose(m[f"loss_{k}_0"], singles[0][1][f"loss_{k}"], rtol=1e-6)
        np.testing.assert_allclose(m[f"loss_{k}"], singles[1][1][f"loss_{k}"], rtol=1e-6)
    # aux_loss=False uses only the final layer and emits no aux metrics
    total_last, m_last = detr_loss(
        {"pred_logits": logits, "pred_boxes": boxes}, batch, MATCHER, aux_loss=False
    )
    np.testing.assert_allclose(total_last, singles[1][0], rtol=1e-6)
    assert "loss_ce_0" not in m_last


def test_num_boxes_normalisation():
    """Batch loss * total boxes == sum over images of (single-image loss * its boxes)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 2, 4, 3)).astype(np.float32)
    boxes = rng.uniform(0.2, 0.6, size=(1, 2, 4, 4)).astype(np.float32)
    labels = np.array([[0, 1, 0], [1, 1, 0]], np.int32)
    gt = rng.uniform(0.2, 0.6, size=(2, 3, 4)).astype(np.float32)
    valid = np.array([[True, False, False], [True, True, False]])

    def run(sl):
        return detr_loss(
            {"pred_logits": logits[:, sl], "pred_boxes": boxes[:, sl]},
            {"labels": labels[sl], "boxes": gt[sl], "box_valid": valid[sl]},
            MATCHER,
        )[1]

    full, first, second = run(slice(0, 2)), run(slice(0, 1)), run(slice(1, 2))
    assert float(full["num_boxes"]) == 3.0
    for k in ("loss_bbox", "loss_giou"):
        np.testing.assert_allclose(3 * full[k], 1 * first[k] + 2 * second[k], rtol=1e-5)


def test_zero_gt_batch_finite_with_gradient():
    rng = np.random.default_rng(2)
    outputs = {
        "pred_logits": jnp.asarray(rng.normal(size=(2, 2, 4, 3)), jnp.float32),
        "pred_boxes": jnp.asarray(rng.uniform(0.1, 0.9, size=(2, 2, 4, 4)), jnp.float32),
    }
    batch = {
        "labels": jnp.zeros((2, 3), jnp.int32),
        "boxes": jnp.zeros((2, 3, 4), jnp.float32),
        "box_valid": jnp.zeros((2, 3), bool),
    }
    criterion = make_criterion(MATCHER)
    loss_fn = jax.jit(lambda o: criterion(o, batch))
    (total, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(outputs)
    assert all(np.isfinite(float(v)) for v in m.values())
    assert float(m["loss_bbox"]) == 0.0 and float(m["loss_giou"]) == 0.0
    assert float(m["class_error"]) == 0.0 and float(m["num_boxes"]) == 1.0
    # all queries target no-object: CE = mean of -log p[no object]
    logp = np_log_softmax(np.asarray(outputs["pred_logits"][-1]))
    np.testing.assert_allclose(m["loss_ce"], -logp[..., 2].mean(), rtol=1e-5)
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(grads["pred_boxes"]), 0.0)


def test_gradient_finite_under_jit_and_matches_fixed_match():
    outputs, batch = make_inputs(num_layers=2)
    f = lambda o, match=None: detr_loss(o, batch, MATCHER, match=match)[0]
    g = jax.jit(jax.grad(f))(outputs)
    for leaf in jax.tree.leaves(g):
        assert np.all(np.isfinite(np.asarray(leaf)))
    # precomputed (same) match gives the same gradient: matching contributes none
    fixed = jnp.array([[[0, 2, -1]]] * 2, jnp.int32)
    g_fixed = jax.grad(f)(outputs, fixed)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_fixed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


class _FailingMatcher(Matcher):
    def __call__(self, cost, gt_valid):
        raise AssertionError("matcher must not be called when match is given")


def test_precomputed_match_bypasses_matcher():
    outputs, batch = make_inputs(num_layers=2)
    fixed = jnp.array([[[0, 2, -1]]] * 2, jnp.int32)
    total, _ = detr_loss(outputs, batch, _FailingMatcher(), match=fixed)
    ref, _ = detr_loss(outputs, batch, MATCHER)
    np.testing.assert_allclose(total, ref, rtol=1e-6)
    # a deliberately different match changes the loss
    other = jnp.array([[[1, 0, -1]]] * 2, jnp.int32)
    total_other, _ = detr_loss(outputs, batch, _FailingMatcher(), match=other)
    assert float(total_other) > float(total)


def test_query_valid_excludes_queries():
    outputs, batch = make_inputs()
    # exclude q2: g1 must then go to q1 and q2 drops out of the CE
    qv = jnp.array([[True, True, False]])
    _, m = detr_loss(outputs, batch, MATCHER, query_valid=qv)
    logp = np_log_softmax(LOGITS)
    ce = -np.array([logp[0, 0], logp[1, 1]])  # q0 -> class 0, q1 -> class 1, weights 1
    np.testing.assert_allclose(m["loss_ce"], ce.mean(), rtol=1e-5)
    # L1 of q1 vs g1: |0.7-0.5| + |0.7-0.5| + |0.1-0.2| + |0.1-0.4| = 0.8; / 2 boxes
    np.testing.assert_allclose(m["loss_bbox"], 0.8 / 2, rtol=1e-5)


def test_image_valid_filler_images_ignored_in_ce():
    outputs, batch = make_inputs()
    two = {k: jnp.concatenate([v, v], axis=1) for k, v in outputs.items()}
    batch2 = {k: jnp.concatenate([v, jnp.zeros_like(v)], axis=0) for k, v in batch.items()}
    batch2["image_valid"] = jnp.array([True, False])
    _, m1 = detr_loss(outputs, batch, MATCHER)
    _, m2 = detr_loss(two, batch2, MATCHER)
    for k in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error", "class_error"):
        np.testing.assert_allclose(m2[k], m1[k], rtol=1e-6)


def test_shape_errors():
    outputs, batch = make_inputs()
    # boxes must match the logits, and the logits the configured classes (C + 1 or C).
    bad = dict(outputs, pred_boxes=outputs["pred_boxes"][:, :, :2])
    with pytest.raises(ValueError, match=r"pred_boxes \[L,B,Q,4\]"):
        detr_loss(bad, batch, MATCHER)
    with pytest.raises(ValueError, match="match must be"):
        detr_loss(outputs, batch, MATCHER, match=jnp.zeros((1, 1, 2), jnp.int32))
    config = base_config()
    config.num_classes = outputs["pred_logits"].shape[-1] + 1  # logits have C - 1 columns
    with pytest.raises(ValueError, match="pred_logits has"):
        build_criterion(config)(outputs, batch)


def test_build_criterion_from_the_base_config_is_detrs_criterion():
    """base_config's loss / matcher sections give the criterion above (same total, metrics)."""
    config = base_config()
    config.num_classes = 2  # make_inputs' logits: C + 1 = 3
    criterion = build_criterion(config)
    assert set(criterion.terms) == {"labels", "boxes", "cardinality"}
    assert criterion.weights == DETR_WEIGHTS and criterion.costs == DETR_COSTS
    assert criterion.aux_loss and isinstance(criterion.matcher, HungarianScipyMatcher)
    outputs, batch = make_inputs(num_layers=2)
    total, m = jax.jit(criterion)(outputs, batch)
    ref_total, ref = detr_loss(outputs, batch, MATCHER)
    np.testing.assert_allclose(total, ref_total, rtol=1e-6)
    assert set(m) == set(ref)
    for k in ref:
        np.testing.assert_allclose(m[k], ref[k], rtol=1e-6)
