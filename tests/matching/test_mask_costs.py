"""The `mask` and `dice` matching cost terms against HF Mask2FormerHungarianMatcher on the same
points (its torch.rand replaced by our points), and matching with them inside jit through the
criterion (hungarian_jax, hungarian_scipy: the same assignment as HF's matcher)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hf_mask_reference import NUM_CLASSES, make_problem, mask_labels, torch_rand_from  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from transformers.models.mask2former import modeling_mask2former as m2f  # noqa: E402

from detr_jax.losses import LOSS_TERMS, Criterion  # noqa: E402
from detr_jax.losses.masks import loss_rng  # noqa: E402
from detr_jax.matching import (  # noqa: E402
    MATCHERS,
    check_cost_weights,
    cost_term_settings,
    get_matcher,
    matching_cost,
)
from detr_jax.matching.cost_terms import matching_points  # noqa: E402

NUM_POINTS = 64
COSTS = {"class": 2.0, "mask": {"weight": 5.0, "num_points": NUM_POINTS},
         "dice": {"weight": 5.0, "num_points": NUM_POINTS}}


def hf_matcher_costs(outputs_l, batch, key, monkeypatch):
    """HF's matcher on one layer ({pred_logits, pred_masks} [B, ...]): (its cost matrices
    [Q, n_b] per image, its indices), with its per-image points set to ours."""
    points = np.asarray(matching_points(key, len(batch["box_valid"]), NUM_POINTS))
    costs = []

    def recording_lsa(cost):
        costs.append(np.asarray(cost))
        return linear_sum_assignment(cost)

    matcher = m2f.Mask2FormerHungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0,
                                              num_points=NUM_POINTS)
    labels = [torch.from_numpy(batch["labels"][b][batch["box_valid"][b]]).long()
              for b in range(len(points))]
    monkeypatch.setattr(m2f, "linear_sum_assignment", recording_lsa)
    with torch_rand_from(monkeypatch, [p[None] for p in points]):
        indices = matcher(torch.from_numpy(outputs_l["pred_masks"]),
                          torch.from_numpy(outputs_l["pred_logits"]), mask_labels(batch), labels)
    return costs, indices


def test_mask_and_dice_costs_match_hf_matcher(monkeypatch):
    outputs, batch = make_problem(seed=10, num_layers=1, num_valid=(2, 3))
    key = jax.random.PRNGKey(5)
    layer = {k: v[0] for k, v in outputs.items()}
    got = np.asarray(jax.jit(lambda o, b: matching_cost(
        o["pred_logits"], o["pred_boxes"], b["labels"], b["boxes"], b["box_valid"], COSTS,
        pred_masks=o["pred_masks"], gt_masks=b["masks"], rng=key))(layer, batch))
    want, _ = hf_matcher_costs(layer, batch, key, monkeypatch)
    for b, ref in enumerate(want):
        valid = batch["box_valid"][b]
        assert ref.std() > 0.1  # the reference really varies across pairs
        np.testing.assert_allclose(got[b][:, valid], ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[b][:, ~valid], 0.0)


@functools.cache
def jitted_match(matcher_name: str):
    c = Criterion({"labels": {}}, {"loss_ce": 1.0}, LOSS_TERMS, get_matcher(matcher_name), COSTS,
                  num_classes=NUM_CLASSES)
    return jax.jit(lambda o, b: c.targets(o, b).match)


@pytest.mark.parametrize("matcher_name", ["hungarian_jax", "hungarian_scipy"])
def test_criterion_matches_like_hf_inside_jit(matcher_name, monkeypatch):
    """All L layers matched in one jit: each layer with its own points (stream 1 of loss_rng,
    folded with the layer), the same assignment as HF's matcher on those points."""
    outputs, batch = make_problem(seed=11, num_layers=2, num_valid=(3, 1))
    batch["loss_rng"] = jax.random.PRNGKey(9)
    match = np.asarray(jitted_match(matcher_name)(outputs, batch))
    base = loss_rng(batch, 1)
    for layer in range(2):
        key = jax.random.fold_in(base, layer)
        _, indices = hf_matcher_costs({k: v[layer] for k, v in outputs.items()}, batch, key,
                                      monkeypatch)
        for b, (src, tgt) in enumerate(indices):
            want = np.full(batch["box_valid"].shape[1], -1)
            want[tgt.numpy()] = src.numpy()
            np.testing.assert_array_equal(match[layer, b], want)


@pytest.mark.parametrize("matcher_name", sorted(set(MATCHERS) - {"hungarian_jax",
                                                                  "hungarian_scipy"}))
def test_other_matchers_run_with_mask_costs_in_jit(matcher_name):
    outputs, batch = make_problem(seed=12, num_layers=2, num_valid=(3, 0))
    match = np.asarray(jitted_match(matcher_name)(outputs, batch))
    assert match.shape == (2, 2, 3)
    for layer in range(2):
        got = match[layer, 0]
        assert sorted(set(got.tolist())) == sorted(got.tolist()) and np.all(got >= 0)
        np.testing.assert_array_equal(match[layer, 1], -1)


def test_mask_costs_settings_and_errors():
    assert cost_term_settings("mask") == ("num_points",)
    assert cost_term_settings("dice") == ("num_points",)
    check_cost_weights({"mask": {"weight": 5.0, "num_points": 100}, "dice": 5.0})
    with pytest.raises(ValueError, match="unknown setting"):
        check_cost_weights({"mask": {"weight": 5.0, "pred_masks": None}})
    outputs, batch = make_problem(seed=13, num_layers=1)
    layer = {k: v[0] for k, v in outputs.items()}
    args = (layer["pred_logits"], layer["pred_boxes"], batch["labels"], batch["boxes"],
            batch["box_valid"], COSTS)
    with pytest.raises(ValueError, match="'mask' needs \\['pred_masks', 'gt_masks'\\]"):
        matching_cost(*args)
    with pytest.raises(ValueError, match="not at stride 4"):
        matching_cost(*args, pred_masks=layer["pred_masks"], gt_masks=batch["masks"][..., :8, :])
    # a criterion whose pred_masks cover fewer layers than it matches (DETR's mask head)
    c = Criterion({"labels": {}}, {"loss_ce": 1.0}, LOSS_TERMS, get_matcher("hungarian_jax"),
                  COSTS, num_classes=NUM_CLASSES)
    short = dict(outputs, pred_masks=outputs["pred_masks"][-1:],
                 pred_logits=np.concatenate([outputs["pred_logits"]] * 2),
                 pred_boxes=np.concatenate([outputs["pred_boxes"]] * 2))
    with pytest.raises(ValueError, match="need pred_masks on every matched layer"):
        c(short, batch)
    with pytest.raises(ValueError, match="need outputs\\['pred_masks'\\] and batch\\['masks'\\]"):
        c(outputs, {k: v for k, v in batch.items() if k != "masks"})


def test_costs_prefer_the_query_that_draws_the_target():
    """Query q's logits are +-8 by target q's coverage of each stride-4 block: for both terms
    it is the cheapest query of target q."""
    outputs, batch = make_problem(seed=14, num_layers=1, num_valid=(3,), num_q=3)
    masks = batch["masks"][0].astype(np.float32)  # [G, 24, 32]
    # query q predicts target q: logits +-8 at stride 4 from the target's 4x4 block means
    block = masks.reshape(3, 6, 4, 8, 4).mean(axis=(2, 4))
    pred = jnp.asarray(np.where(block > 0.5, 8.0, -8.0)[None], jnp.float32)
    costs = jax.jit(lambda o, b, pm: [matching_cost(
        o["pred_logits"][0], o["pred_boxes"][0], b["labels"], b["boxes"], b["box_valid"],
        {name: {"weight": 1.0, "num_points": 256}}, pred_masks=pm, gt_masks=b["masks"],
        rng=jax.random.PRNGKey(1)) for name in ("mask", "dice")])(outputs, batch, pred)
    for cost in costs:
        np.testing.assert_array_equal(np.argmin(np.asarray(cost)[0], axis=0), [0, 1, 2])


def test_mask_focal_cost_matches_hf_maskformer_on_the_same_points():
    from transformers.models.maskformer import modeling_maskformer as mf

    from detr_jax.matching.cost_terms import mask_focal_cost, sampled_masks

    outputs, batch = make_problem(seed=11, num_layers=1, num_valid=(2, 3))
    key = jax.random.PRNGKey(7)
    pred, gt = outputs["pred_masks"][0], batch["masks"]
    got = np.asarray(mask_focal_cost(None, None, None, None, pred_masks=pred, gt_masks=gt,
                                     rng=key, num_points=NUM_POINTS))
    x, t = (np.asarray(a) for a in sampled_masks(pred, gt, key, NUM_POINTS))
    for b in range(len(x)):  # HF's MaskFormer matcher term on these points: [Q, P] x [G, P]
        want = mf.pair_wise_sigmoid_focal_loss(torch.from_numpy(x[b]), torch.from_numpy(t[b]),
                                               alpha=0.25, gamma=2.0).numpy()
        assert want.std() > 1e-3
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)
