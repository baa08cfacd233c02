"""Tests of the sigmoid focal loss term (`focal_labels`), the criterion on sigmoid logits
([.., C], no no-object column) and the two-stage encoder losses (`<loss>_enc`), against hand /
numpy computations and Hugging Face's Deformable DETR loss (transformers.loss)."""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers.loss.loss_deformable_detr import (  # noqa: E402
    DeformableDetrHungarianMatcher,
    DeformableDetrImageLoss,
)

from detr_jax.losses import LOSS_TERMS, Criterion  # noqa: E402
from detr_jax.losses.focal import sigmoid_focal_elements  # noqa: E402
from detr_jax.matching import HungarianScipyMatcher, get_matcher  # noqa: E402

FOCAL_COSTS = {"focal_class": 2.0, "bbox": 5.0, "giou": 2.0}
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
TERMS = {"focal_labels": {}, "boxes": {}, "cardinality": {}}


def _criterion(num_classes, terms=None, weights=None, aux_loss=True):
    return Criterion(terms or TERMS, weights or WEIGHTS, LOSS_TERMS, HungarianScipyMatcher(),
                     FOCAL_COSTS, aux_loss, num_classes=num_classes)


@functools.cache
def _jitted(num_classes, aux_loss=True):
    criterion = _criterion(num_classes, aux_loss=aux_loss)
    return jax.jit(lambda o, b, qv, match: criterion(o, b, query_valid=qv, match=match))


def loss(outputs, batch, num_classes, query_valid=None, match=None, aux_loss=True):
    """The jitted criterion (focal_labels + boxes + cardinality, Deformable DETR's weights)."""
    return jax.device_get(_jitted(num_classes, aux_loss)(outputs, batch, query_valid, match))


def np_focal(x, y, alpha=0.25, gamma=2.0):
    """The RetinaNet focal loss elementwise, float64 numpy, written from its definition."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    return (alpha * y + (1 - alpha) * (1 - y)) * (1 - p_t) ** gamma * bce


# ---------------------------------------------------------------------------------------------
# Hand-worked and numerical properties


def test_hand_worked_focal_value():
    # 2 queries, 3 classes; one box of class 1, matched (fixed match) to query 0.
    logits = np.array([[1.0, -1.0, 0.0], [2.0, 0.0, -2.0]], np.float32)
    outputs = {"pred_logits": jnp.asarray(logits[None, None]),
               "pred_boxes": jnp.full((1, 1, 2, 4), 0.5)}
    batch = {"labels": jnp.array([[1]]), "boxes": jnp.array([[[0.5, 0.5, 0.2, 0.2]]]),
             "box_valid": jnp.array([[True]])}
    _, m = loss(outputs, batch, 3, match=jnp.array([[[0]]]))
    # By hand, with s(x) = 1/(1+e^-x): a negative element costs 0.75 s(x)^2 log(1+e^x), a
    # positive one 0.25 (1-s(x))^2 log(1+e^-x). Query 0 is (neg, pos, neg), query 1 all neg:
    s = lambda x: 1 / (1 + np.exp(-x))
    neg = lambda x: 0.75 * s(x) ** 2 * np.log1p(np.exp(x))
    pos = lambda x: 0.25 * (1 - s(x)) ** 2 * np.log1p(np.exp(-x))
    hand = neg(1.0) + pos(-1.0) + neg(0.0) + neg(2.0) + neg(0.0) + neg(-2.0)
    # The same six elements with a calculator: q0 0.526399, 0.175466, 0.129965; q1 1.237561,
    # 0.129965, 0.001353.
    np.testing.assert_allclose(hand, 2.200709, atol=2e-6)
    onehot = np.array([[0, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(np_focal(logits, onehot).sum(), hand, rtol=1e-12)
    np.testing.assert_allclose(m["loss_ce"], hand, rtol=1e-6)  # / num_boxes = 1
    assert m["class_error"] == 100.0  # query 0's argmax is class 0, not 1


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.1, 1.5), (-1.0, 2.0)])
def test_elements_match_the_definition(alpha, gamma):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, 7)) * 4).astype(np.float32)
    y = (rng.random((5, 7)) < 0.3).astype(np.float32)
    want = np_focal(x, y, alpha, gamma) if alpha >= 0 else np_focal(x, y, 0.5, gamma) * 2
    got = np.asarray(sigmoid_focal_elements(jnp.asarray(x), jnp.asarray(y), alpha, gamma))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


def test_large_logits_are_finite_with_finite_gradients():
    # Every sign combination of logit and target at |x| = 100: p is exactly 0 or 1 in float32.
    logits = jnp.array([[[[100.0, -100.0, 100.0], [-100.0, 100.0, -100.0]]]])
    outputs = {"pred_logits": logits, "pred_boxes": jnp.full((1, 1, 2, 4), 0.5)}
    batch = {"labels": jnp.array([[0, 0]]), "boxes": jnp.array([[[0.5, 0.5, .2, .2]] * 2]),
             "box_valid": jnp.array([[True, True]])}
    match = jnp.array([[[0, 1]]])  # query 0 -> class 0 (x=100, easy), query 1 -> class 0 (hard)
    criterion = _criterion(3, terms={"focal_labels": {}}, weights={"loss_ce": 1.0})

    def f(x):
        return criterion(dict(outputs, pred_logits=x), batch, match=match)[0]

    value, grad = jax.jit(jax.value_and_grad(f))(logits)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    # Hard elements cost alpha_t * 1 * 100: q0 c1 (neg, x=-100) ~0, q0 c2 (neg, x=100) 75,
    # q1 c0 (pos, x=-100) 25, q1 c1 (neg, x=100) 75, q1 c2 ~0; q0 c0 ~0. Over 2 boxes: 87.5.
    np.testing.assert_allclose(float(value), 87.5, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.asarray(grad)).max(), 0.75 / 2, rtol=1e-5)


def test_query_weight_masks_invalid_queries_and_filler_images():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 2, 4, 3)).astype(np.float32)
    boxes = np.full((1, 2, 4, 4), 0.5, np.float32)
    batch = {"labels": jnp.array([[2], [1]]), "boxes": jnp.full((2, 1, 4), 0.5),
             "box_valid": jnp.array([[True], [True]])}
    match = jnp.array([[[1], [0]]])
    qv = np.ones((2, 4), bool)
    qv[0, 3] = False
    _, m = loss({"pred_logits": logits, "pred_boxes": boxes}, batch, 3, qv, match)
    onehot = np.zeros_like(logits)
    onehot[0, 0, 1, 2] = onehot[0, 1, 0, 1] = 1
    elem = np_focal(logits, onehot).sum(-1)[0]  # [B, Q]
    np.testing.assert_allclose(m["loss_ce"], (elem.sum() - elem[0, 3]) / 2, rtol=1e-5)
    # The masked query's logits do not matter; a filler image's queries do not either.
    other = logits.copy()
    other[0, 0, 3] = [50.0, -50.0, 9.0]
    _, m2 = loss({"pred_logits": other, "pred_boxes": boxes}, batch, 3, qv, match)
    assert m2["loss_ce"] == m["loss_ce"]
    filler = dict(batch, image_valid=jnp.array([True, False]))
    _, m3 = loss({"pred_logits": logits, "pred_boxes": boxes}, filler, 3, qv, match)
    np.testing.assert_allclose(m3["loss_ce"], (elem[0].sum() - elem[0, 3]) / 2, rtol=1e-5)


def test_sigmoid_targets_and_cardinality_by_hand():
    # Image 0: q0 max logit 0.5 (object), q1 all < 0, q2 max 3 (object), q3 -1 (none): 2
    # predicted vs 1 box. Image 1: q0, q1, q3 objects, q2 not, but q3 is an invalid query: 2
    # predicted vs 3 boxes. cardinality_error = (|2 - 1| + |2 - 3|) / 2 = 1.
    logits = np.array([[[0.5, -1, -2], [-0.1, -3, -0.2], [3, 0, 1], [-1, -1, -1]],
                       [[1, 0, 0], [-1, 2, 0], [-1, -1, -0.01], [4, 4, 4]]], np.float32)
    outputs = {"pred_logits": jnp.asarray(logits[None]), "pred_boxes": jnp.full((1, 2, 4, 4), .5)}
    batch = {"labels": jnp.array([[2, 0, 0], [0, 1, 2]]), "boxes": jnp.full((2, 3, 4), 0.5),
             "box_valid": jnp.array([[True, False, False], [True, True, True]])}
    qv = jnp.array([[True] * 4, [True, True, True, False]])
    match = jnp.array([[[1, -1, -1], [0, 1, 2]]])
    _, m = loss(outputs, batch, 3, qv, match, aux_loss=False)
    assert float(m["cardinality_error"]) == 1.0
    t = jax.jit(_criterion(3).targets)(outputs, batch, qv, match)
    assert t.num_classes == 3  # static: not a leaf of the pytree
    assert len(jax.tree.leaves(t)) == 10 and all(isinstance(x, jax.Array)
                                                  for x in jax.tree.leaves(t))
    # No-object index C = 3 (not C - 1 = 2, a real class) for the unmatched queries.
    np.testing.assert_array_equal(t.target_classes[0], [[3, 2, 3, 3], [0, 1, 2, 3]])
    # Softmax logits keep DETR's rule: argmax != the last (no-object) column.
    soft = np.concatenate([logits, np.zeros((2, 4, 1), np.float32)], -1)
    crit_soft = Criterion({"labels": {}, "cardinality": {}}, {"loss_ce": 1.0}, LOSS_TERMS,
                          HungarianScipyMatcher(), {"class": 1.0}, num_classes=3)
    _, ms = jax.jit(crit_soft)({"pred_logits": jnp.asarray(soft[None]),
                                "pred_boxes": outputs["pred_boxes"]}, batch, qv, match)
    # argmax object: image 0 q0, q2 (2 vs 1); image 1 q0, q1 (q2's max -0.01 < 0; 2 vs 3).
    assert float(ms["cardinality_error"]) == 1.0


def test_terms_refuse_the_other_kind_of_logits():
    outputs = {"pred_logits": jnp.zeros((1, 1, 4, 3)), "pred_boxes": jnp.full((1, 1, 4, 4), .5)}
    batch = {"labels": jnp.array([[0]]), "boxes": jnp.full((1, 1, 4), .5),
             "box_valid": jnp.array([[True]])}
    softmax_crit = Criterion({"labels": {}}, {"loss_ce": 1.0}, LOSS_TERMS,
                             HungarianScipyMatcher(), {"bbox": 1.0}, num_classes=3)
    with pytest.raises(ValueError, match="focal_labels"):  # (raised while tracing)
        jax.eval_shape(softmax_crit, outputs, batch)
    focal_crit = _criterion(2, terms={"focal_labels": {}}, weights={"loss_ce": 1.0})
    with pytest.raises(ValueError, match="'labels' term"):
        jax.eval_shape(focal_crit, outputs, batch)  # 3 = C + 1 logits: softmax


# ---------------------------------------------------------------------------------------------
# Against Hugging Face's DeformableDetrImageLoss


def spread_boxes(rng, *shape):
    """float32 [*shape, 4] normalised cxcywh: cx, cy in [0.2, 0.8], w, h in [0.05, 0.4]."""
    return np.concatenate([rng.uniform(0.2, 0.8, shape + (2,)),
                           rng.uniform(0.05, 0.4, shape + (2,))], -1).astype(np.float32)


def random_case(seed, counts=(4, 1, 3), num_layers=3, num_q=20, num_classes=6):
    """Random sigmoid logits / well-spread boxes, and ground truth padded to max(counts)."""
    rng = np.random.default_rng(seed)
    boxes = functools.partial(spread_boxes, rng)
    bsz, g = len(counts), max(counts)
    logits = (rng.normal(size=(num_layers, bsz, num_q, num_classes)) * 2).astype(np.float32)
    pred = boxes(num_layers, bsz, num_q)
    gt, labels = boxes(bsz, g), rng.integers(0, num_classes, (bsz, g)).astype(np.int32)
    valid = np.arange(g)[None] < np.array(counts)[:, None]
    gt[~valid], labels[~valid] = 0.0, 0
    batch = {"labels": labels, "boxes": gt, "box_valid": valid}
    hf_targets = [{"class_labels": torch.as_tensor(labels[b, :n], dtype=torch.int64),
                   "boxes": torch.as_tensor(gt[b, :n])} for b, n in enumerate(counts)]
    return {"pred_logits": logits, "pred_boxes": pred}, batch, hf_targets


def hf_loss(logits, boxes, targets, num_classes):
    """HF's Deformable DETR image loss (focal_class 2 / bbox 5 / giou 2) on [L, B, Q, *]."""
    matcher = DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    criterion = DeformableDetrImageLoss(matcher=matcher, num_classes=num_classes,
                                        focal_alpha=0.25, losses=["labels", "boxes", "cardinality"])
    t = lambda x: torch.as_tensor(np.asarray(x))
    outputs = {"logits": t(logits[-1]), "pred_boxes": t(boxes[-1]),
               "auxiliary_outputs": [{"logits": t(lg), "pred_boxes": t(bx)}
                                     for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)]}
    with torch.no_grad():
        out = {k: float(v) for k, v in criterion(outputs, targets).items()}
        indices = matcher({"logits": outputs["logits"], "pred_boxes": outputs["pred_boxes"]},
                          targets)
    return out, indices


def _class_error(logits, targets, indices):
    """Percent of the final layer's HF-matched queries whose argmax is not their class."""
    wrong = total = 0
    for b, (src, tgt) in enumerate(indices):
        pred = logits[b, src.numpy()].argmax(-1)
        wrong += int(np.sum(pred != targets[b]["class_labels"][tgt].numpy()))
        total += len(src)
    return 100.0 * wrong / total


@pytest.mark.parametrize("seed", [0, 1])
def test_criterion_matches_hf_deformable_detr_loss(seed):
    outputs, batch, targets = random_case(seed)
    total, m = loss(outputs, batch, 6)
    ref, indices = hf_loss(outputs["pred_logits"], outputs["pred_boxes"], targets, 6)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        for suffix in ("", "_0", "_1"):
            np.testing.assert_allclose(m[name + suffix], ref[name + suffix], atol=1e-4,
                                       err_msg=name + suffix)
    np.testing.assert_allclose(m["cardinality_error"], ref["cardinality_error"], atol=1e-6)
    weights = {**WEIGHTS, **{f"{k}_{i}": w for k, w in WEIGHTS.items() for i in range(2)}}
    np.testing.assert_allclose(total, sum(w * ref[k] for k, w in weights.items()), rtol=1e-5)
    np.testing.assert_allclose(m["class_error"],
                               _class_error(outputs["pred_logits"][-1], targets, indices),
                               atol=1e-4)


def test_encoder_losses_match_hf_on_class_agnostic_targets():
    """`<loss>_enc`: HF's loss on the proposals with every class label set to 0."""
    outputs, batch, targets = random_case(2)
    rng = np.random.default_rng(3)
    bsz, num_n, num_classes = 3, 200, 6
    enc_logits = (rng.normal(size=(bsz, num_n, num_classes)) * 2).astype(np.float32)
    enc_boxes = spread_boxes(rng, bsz, num_n)
    two_stage = dict(outputs, enc_outputs={"pred_logits": enc_logits, "pred_boxes": enc_boxes})
    total, m = loss(two_stage, batch, num_classes)
    base_total, base = loss(outputs, batch, num_classes)

    bin_targets = [dict(t, class_labels=torch.zeros_like(t["class_labels"])) for t in targets]
    ref, _ = hf_loss(enc_logits[None], enc_boxes[None], bin_targets, num_classes)
    for name in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
        np.testing.assert_allclose(m[name + "_enc"], ref[name], atol=1e-4, err_msg=name)
    assert 0.0 <= m["class_error_enc"] <= 100.0
    # The decoder's losses are unchanged; the encoder's are added with the same weights.
    for name, v in base.items():
        if name != "loss":
            np.testing.assert_array_equal(m[name], v, err_msg=name)
    np.testing.assert_allclose(total, base_total + sum(w * ref[k] for k, w in WEIGHTS.items()),
                               rtol=1e-5)
    np.testing.assert_allclose(m["loss"], total)


def test_encoder_losses_with_labels_match_hf_on_the_real_targets():
    """`encoder_class_agnostic=False` (DINO's interm loss): HF's loss on the proposals against
    the real labels."""
    outputs, batch, targets = random_case(4)
    rng = np.random.default_rng(5)
    enc_logits = (rng.normal(size=(3, 150, 6)) * 2).astype(np.float32)
    enc_boxes = spread_boxes(rng, 3, 150)
    criterion = Criterion(TERMS, WEIGHTS, LOSS_TERMS, HungarianScipyMatcher(), FOCAL_COSTS,
                          True, num_classes=6, encoder_class_agnostic=False)
    _, m = jax.device_get(criterion(
        dict(outputs, enc_outputs={"pred_logits": enc_logits, "pred_boxes": enc_boxes}), batch))
    ref, _ = hf_loss(enc_logits[None], enc_boxes[None], targets, 6)
    for name in ("loss_ce", "loss_bbox", "loss_giou"):
        np.testing.assert_allclose(m[name + "_enc"], ref[name], atol=1e-4, err_msg=name)


def test_encoder_query_valid_leaves_proposals_out():
    outputs, batch, _ = random_case(4, num_layers=1)
    rng = np.random.default_rng(5)
    enc = {"pred_logits": rng.normal(size=(3, 50, 6)).astype(np.float32),
           "pred_boxes": spread_boxes(rng, 3, 50)}
    qv = np.ones((3, 50), bool)
    qv[:, 40:] = False
    _, m = loss(dict(outputs, enc_outputs=dict(enc, query_valid=qv)), batch, 6, aux_loss=False)
    cut = {k: v[:, :40] for k, v in enc.items()}
    _, ref = loss(dict(outputs, enc_outputs=cut), batch, 6, aux_loss=False)
    for name in ("loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "cardinality_error_enc"):
        np.testing.assert_allclose(m[name], ref[name], rtol=1e-5, err_msg=name)


def test_encoder_matching_with_thousands_of_proposals():
    """N = 4000 proposals >> G boxes: the host (scipy) and in-jit exact matchers agree with HF."""
    outputs, batch, targets = random_case(6, counts=(5, 2), num_layers=1)
    rng = np.random.default_rng(7)
    num_n = 4000
    enc = {"pred_logits": (rng.normal(size=(2, num_n, 6)) * 2).astype(np.float32),
           "pred_boxes": spread_boxes(rng, 2, num_n)}
    bin_targets = [dict(t, class_labels=torch.zeros_like(t["class_labels"])) for t in targets]
    ref, _ = hf_loss(enc["pred_logits"][None], enc["pred_boxes"][None], bin_targets, 6)
    two_stage = dict(outputs, enc_outputs=enc)
    for matcher in (HungarianScipyMatcher(), get_matcher("hungarian_jax")):
        criterion = Criterion(TERMS, WEIGHTS, LOSS_TERMS, matcher, FOCAL_COSTS, False,
                              num_classes=6)
        _, m = jax.device_get(jax.jit(criterion)(two_stage, batch))
        for name in ("loss_ce", "loss_bbox", "loss_giou"):
            # rtol: loss_ce sums 48000 float32 elements to ~3600
            np.testing.assert_allclose(m[name + "_enc"], ref[name], rtol=1e-6, atol=1e-4,
                                       err_msg=f"{type(matcher).__name__} {name}")
