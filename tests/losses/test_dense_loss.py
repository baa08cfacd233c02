"""Dense per-position class targets and loss, against hand-worked cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.losses import LOSS_TERMS, Criterion
from detr_jax.losses.dense import dense_class_loss, dense_targets
from detr_jax.matching import HungarianScipyMatcher


def test_dense_targets_hand_worked():
    # A 64x64 image on a 64x64 canvas, 4x4 feature map (stride 16; cell centres at 8, 24, 40, 56).
    # Box A: label 1, xyxy (0, 0, 40, 40) px -> contains the centres (8|24|40?, ...): the centre
    #   40 lies on its edge (|40-20| <= 20), so rows/cols 0..2 are inside.
    # Box B: label 2, xyxy (44, 44, 52, 52) px: 8 px, contains no centre, but its centre (48, 48)
    #   lies in cell (3, 3) (pixels 48..63), which therefore gets label 2.
    # Box C: label 0, xyxy (16, 16, 32, 32): smaller than A, contains centre (24, 24) -> cell (1, 1)
    #   is label 0 (smallest box wins).
    boxes_px = np.array([[0, 0, 40, 40], [44, 44, 52, 52], [16, 16, 32, 32]], np.float32)
    cxcywh = (
        np.stack(
            [
                (boxes_px[:, 0] + boxes_px[:, 2]) / 2,
                (boxes_px[:, 1] + boxes_px[:, 3]) / 2,
                boxes_px[:, 2] - boxes_px[:, 0],
                boxes_px[:, 3] - boxes_px[:, 1],
            ],
            -1,
        )
        / 64
    )
    t = dense_targets(
        (4, 4),
        (64, 64),
        jnp.array([[64, 64]]),
        jnp.asarray(cxcywh[None]),
        jnp.array([[1, 2, 0]]),
        jnp.array([[True, True, True]]),
        num_classes=3,
    )
    expected = np.array(
        [
            [1, 1, 1, 3],
            [1, 0, 1, 3],
            [1, 1, 1, 3],
            [3, 3, 3, 2],
        ]
    )
    np.testing.assert_array_equal(np.asarray(t[0]), expected)


def test_dense_targets_use_unpadded_size_and_ignore_invalid_boxes():
    # 32x32 image padded to 64x64: 4x4 map, the image covers cells 0..1. One box covering the whole
    # image (normalised 0.5, 0.5, 1, 1) -> cells (0..1, 0..1); an invalid box is ignored.
    t = dense_targets(
        (4, 4),
        (64, 64),
        jnp.array([[32, 32]]),
        jnp.array([[[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]]]),
        jnp.array([[4, 0]]),
        jnp.array([[True, False]]),
        num_classes=5,
    )
    expected = np.full((4, 4), 5)
    expected[:2, :2] = 4
    np.testing.assert_array_equal(np.asarray(t[0]), expected)


def test_dense_loss_weighted_ce_by_hand():
    # 1x2 map, 2 classes + no-object. Position 0 target class 0, position 1 target no-object.
    logits = jnp.array([[[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]]])  # [1, 1, 2, 3]
    batch = {
        "image": jnp.zeros((1, 16, 32, 3)),
        "size": jnp.array([[16, 32]]),
        "boxes": jnp.array([[[0.25, 0.5, 0.5, 1.0]]]),  # covers the left cell only
        "labels": jnp.array([[0]]),
        "box_valid": jnp.array([[True]]),
    }
    loss = dense_class_loss(logits, jnp.ones((1, 1, 2), bool), batch, num_classes=2, eos_coef=0.1)
    lse0 = np.log(np.exp(2) + 2)
    lse1 = np.log(2 + np.e)
    ce0, ce1 = lse0 - 2.0, lse1 - 1.0
    np.testing.assert_allclose(float(loss), (ce0 + 0.1 * ce1) / 1.1, rtol=1e-6)


def test_dense_term_adds_its_weighted_loss_to_the_set_loss():
    """The `dense` term in the criterion: total = set loss + loss_dense weight * dense loss."""
    rng = np.random.default_rng(0)
    outputs = {
        "pred_logits": jnp.asarray(rng.normal(size=(2, 1, 4, 3)), jnp.float32),
        "pred_boxes": jnp.asarray(rng.uniform(0.2, 0.6, size=(2, 1, 4, 4)), jnp.float32),
        "dense_logits": jnp.asarray(rng.normal(size=(1, 2, 2, 3)), jnp.float32),
        "dense_mask": jnp.array([[[True, True], [True, False]]]),
    }
    batch = {
        "image": jnp.zeros((1, 32, 32, 3)),
        "size": jnp.array([[32, 24]]),
        "boxes": jnp.array([[[0.3, 0.3, 0.4, 0.4], [0.7, 0.6, 0.2, 0.3]]]),
        "labels": jnp.array([[1, 0]]),
        "box_valid": jnp.array([[True, True]]),
    }
    terms = {"labels": {"eos_coef": 0.1}, "boxes": {}, "cardinality": {}}
    weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    costs = {"class": 1.0, "bbox": 5.0, "giou": 2.0}
    matcher = HungarianScipyMatcher()
    base = Criterion(terms, weights, LOSS_TERMS, matcher, costs)
    dense = Criterion({**terms, "dense": {"eos_coef": 0.2}}, {**weights, "loss_dense": 0.5},
                      LOSS_TERMS, matcher, costs)
    total, metrics = jax.jit(base)(outputs, batch)
    total_d, metrics_d = jax.jit(dense)(outputs, batch)
    expected = dense_class_loss(outputs["dense_logits"], outputs["dense_mask"], batch,
                                num_classes=2, eos_coef=0.2)
    np.testing.assert_allclose(metrics_d["loss_dense"], expected, rtol=1e-6)
    np.testing.assert_allclose(total_d, total + 0.5 * expected, rtol=1e-6)
    assert "loss_dense" not in metrics
