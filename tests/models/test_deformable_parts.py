"""Deformable DETR's parts on hand-worked cases: the offset init, reference points and valid
ratios, the proposals, a filler image, remat, bf16, and start-up checks of part combinations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from detr_jax.config_base import base_config
from detr_jax.config_deformable import deformable_detr
from detr_jax.losses import build_criterion, loss_problems
from detr_jax.models import build_model, init_variables, model_problems
from detr_jax.models.necks.multi_scale import valid_ratios
from detr_jax.models.transformers.deformable_attention import (
    encoder_reference_points,
    offset_bias_init,
)
from detr_jax.models.transformers.two_stage import INVALID_PROPOSAL, encoder_proposals


def tiny(variant: str = "two_stage", **transformer):
    c = base_config()
    c.num_classes = 3
    c.model.backbone.name = "resnet18"
    c.model.backbone.width = 8
    c.model.backbone.norm = "bn"
    c.model.hidden_dim = 32
    deformable_detr(c, variant)
    c.model.neck.num_groups = 8
    t = c.model.transformer
    t.nheads, t.enc_layers, t.dec_layers, t.dim_feedforward = 4, 1, 2, 32
    t.update(transformer)
    c.model.queries.num_queries = 6
    return c


def test_offset_bias_points_each_head_its_own_way():
    bias = np.asarray(offset_bias_init(4, 2, 3)(None, (4 * 2 * 3 * 2,))).reshape(4, 2, 3, 2)
    # 4 heads: angles 0, 90, 180, 270 degrees, scaled so the larger coordinate is 1.
    np.testing.assert_allclose(bias[:, 0, 0], [[1, 0], [0, 1], [-1, 0], [0, -1]], atol=1e-6)
    np.testing.assert_allclose(bias[1, 1, 2], [0, 3], atol=1e-6)  # point 2: 3x, every level


def test_valid_ratios_and_encoder_references_by_hand():
    mask = np.zeros((1, 4, 5), bool)
    mask[0, :2, :4] = True  # real 2 rows x 4 columns
    ratios = np.asarray(valid_ratios(jnp.asarray(mask)))
    np.testing.assert_allclose(ratios, [[4 / 5, 2 / 4]])
    refs = np.asarray(encoder_reference_points(((4, 5),), jnp.asarray(ratios[:, None])))
    # token (row 1, col 3): centre (3.5, 1.5) of the real 4x2 image -> (0.875, 0.75), then
    # scaled to the canvas by the ratios -> (0.7, 0.375).
    np.testing.assert_allclose(refs[0, 1 * 5 + 3, 0], [0.7, 0.375], rtol=1e-6)


def test_proposals_by_hand():
    mask = np.zeros((1, 2 * 4), bool).reshape(1, 2, 4)
    mask[0, :, :2] = True
    props, valid = encoder_proposals(jnp.asarray(mask.reshape(1, 8)), ((2, 4),))
    props, valid = np.asarray(props), np.asarray(valid)
    # token (0, 1): centre ((1 + 0.5) / 2, (0 + 0.5) / 2), size 0.05 (level 0)
    expected = np.array([0.75, 0.25, 0.05, 0.05])
    np.testing.assert_allclose(1 / (1 + np.exp(-props[0, 1])), expected, rtol=1e-5)
    assert valid[0].tolist() == [True, True, False, False] * 2
    assert (props[0, 2] == INVALID_PROPOSAL).all()


@pytest.mark.slow  # 44 s alone on 2 cores (two_stage, 2026-12-02); the default budget is 6 min
@pytest.mark.parametrize("variant", ["plain", "two_stage"])
def test_filler_image_stays_finite(variant):
    """A filler image (no real pixel, as the last eval batch's padding) and a real one."""
    c = tiny(variant)
    model = build_model(c)
    variables = init_variables(model, (64, 64), jax.random.PRNGKey(0))
    mask = np.zeros((2, 64, 64), bool)
    mask[0, :40, :56] = True
    out = model.apply(variables, jnp.ones((2, 64, 64, 3)), jnp.asarray(mask))
    for leaf in jax.tree.leaves(out):
        assert np.isfinite(np.asarray(leaf)).all()


@pytest.mark.slow  # two compiles of a train-step-sized gradient (25 s on a loaded 2-core run)
def test_remat_sampling_keeps_loss_and_gradients():
    batch = {"labels": np.array([[0, 2]], np.int32),
             "boxes": np.array([[[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]]], np.float32),
             "box_valid": np.ones((1, 2), bool)}
    images, mask = jnp.ones((1, 64, 64, 3)), jnp.ones((1, 64, 64), bool)
    results = []
    for remat in (False, True):
        c = tiny("refine", remat_sampling=remat)
        model, criterion = build_model(c), build_criterion(c)
        variables = init_variables(model, (64, 64), jax.random.PRNGKey(0))

        def loss(p, model=model, criterion=criterion, variables=variables):
            return criterion(model.apply({**variables, "params": p}, images, mask), batch)[0]

        results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
    (l0, g0), (l1, g1) = results
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # 11 s alone on 2 cores (2026-12-02; default budget 6 min)
def test_bfloat16_runs_finite():
    c = tiny("refine")
    c.model.dtype = "bfloat16"
    model = build_model(c)
    variables = init_variables(model, (64, 64), jax.random.PRNGKey(0))
    out = model.apply(variables, jnp.ones((1, 64, 64, 3)), jnp.ones((1, 64, 64), bool))
    assert out["pred_logits"].dtype == jnp.float32
    assert np.isfinite(np.asarray(out["pred_boxes"])).all()


def test_part_combinations_are_checked_at_start_up():
    c = tiny("two_stage")
    c.model.queries = ml_collections.ConfigDict(dict(name="learned", num_queries=6,
                                                     with_content=True))
    assert any("encoder_proposals" in line for line in model_problems(c))
    c = tiny("plain")
    c.model.neck = ml_collections.ConfigDict(dict(name="single_level", level="C5"))
    assert any("multi_scale" in line for line in model_problems(c))
    c = tiny("plain")
    c.model.queries.with_content = False
    assert any("with_content" in line for line in model_problems(c))
    c = tiny("plain")
    c.loss.terms = ml_collections.ConfigDict({"labels": {}, "boxes": {}})
    c.matcher.costs = ml_collections.ConfigDict({"class": 1.0, "bbox": 5.0, "giou": 2.0})
    lines = loss_problems(c)
    assert any("loss.terms.labels does not fit" in line for line in lines)
    assert any("matcher.costs.class does not fit" in line for line in lines)
    assert model_problems(tiny("plain")) == [] and loss_problems(tiny("plain")) == []


@pytest.mark.slow  # 20 s alone on 2 cores (2026-12-02; default budget 6 min)
def test_group_queries_one_to_many_in_training_only():
    """Group DETR groups on the one-stage deformable decoder: K * Q queries in training, each
    group blind to the others (group 0 then predicts exactly as in inference), Q in eval."""
    c = tiny("plain", dropout=0.0)
    c.model.backbone.norm = "frozen_bn"
    c.model.queries.num_groups = 3
    model, criterion = build_model(c), build_criterion(c)
    variables = init_variables(model, (64, 64), jax.random.PRNGKey(0))
    images, mask = jnp.ones((1, 64, 64, 3)), jnp.ones((1, 64, 64), bool)
    train_out = model.apply(variables, images, mask, train=True)
    eval_out = model.apply(variables, images, mask)
    q = c.model.queries.num_queries
    assert train_out["pred_logits"].shape[2] == 3 * q and eval_out["pred_logits"].shape[2] == q
    assert int(train_out["num_query_groups"]) == 3
    np.testing.assert_allclose(train_out["pred_boxes"][:, :, :q], eval_out["pred_boxes"],
                               atol=1e-5)
    batch = {"labels": np.array([[1]], np.int32),
             "boxes": np.array([[[0.5, 0.5, 0.3, 0.3]]], np.float32),
             "box_valid": np.ones((1, 1), bool)}
    loss, metrics = criterion(train_out, batch)
    assert np.isfinite(float(loss)) and "loss_ce" in metrics
