"""Group DETR training groups: the mask, the fold, the set loss per group and the model's output."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config

from detr_jax.core.compile_options import jit_once
from detr_jax.losses import LOSS_TERMS, Criterion, build_criterion
from detr_jax.matching import HungarianScipyMatcher
from detr_jax.models import build_model, init_variables
from detr_jax.models.queries.groups import fold_query_groups, group_self_attn_mask

MATCHER = HungarianScipyMatcher()
# DETR's criterion: labels (eos_coef 0.1), boxes, cardinality; weights and costs 1 / 5 / 2.
CRITERION = Criterion(
    {"labels": {"eos_coef": 0.1}, "boxes": {}, "cardinality": {}},
    {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}, LOSS_TERMS, MATCHER,
    {"class": 1.0, "bbox": 5.0, "giou": 2.0},
)


def test_group_mask_is_block_diagonal():
    mask = np.asarray(group_self_attn_mask(3, 2))[0]
    expected = np.kron(np.eye(3, dtype=bool), np.ones((2, 2), bool))
    np.testing.assert_array_equal(mask, expected)


def _random_problem(seed=0, num_layers=2, bsz=2, groups=3, queries=4, gts=3, classes=3):
    rng = np.random.default_rng(seed)
    outputs = {
        "pred_logits": jnp.asarray(
            rng.normal(size=(num_layers, bsz, groups * queries, classes + 1)), jnp.float32
        ),
        "pred_boxes": jnp.asarray(
            rng.uniform(0.2, 0.6, size=(num_layers, bsz, groups * queries, 4)), jnp.float32
        ),
    }
    batch = {
        "labels": jnp.asarray(rng.integers(0, classes, size=(bsz, gts)), jnp.int32),
        "boxes": jnp.asarray(rng.uniform(0.2, 0.6, size=(bsz, gts, 4)), jnp.float32),
        "box_valid": jnp.asarray([[True, True, False], [True, False, False]]),
    }
    return outputs, batch


def test_folded_loss_is_the_mean_of_each_group_matched_alone():
    groups, queries = 3, 4
    outputs, batch = _random_problem(groups=groups, queries=queries)
    folded_out, folded_batch = fold_query_groups(outputs, batch, groups)
    assert folded_out["pred_logits"].shape == (2, 2 * groups, queries, 4)
    loss_fn = jax.jit(CRITERION)  # not eager
    loss, metrics = loss_fn(folded_out, folded_batch)
    # The criterion folds by itself when the outputs say how many groups they hold.
    grouped_loss, grouped_metrics = jax.jit(
        lambda o, b: CRITERION(dict(o, num_query_groups=groups), b))(outputs, batch)
    np.testing.assert_array_equal(grouped_loss, loss)
    for key, value in metrics.items():
        np.testing.assert_array_equal(grouped_metrics[key], value)
    per_group = []
    for g in range(groups):
        sl = slice(g * queries, (g + 1) * queries)
        out_g = {k: v[:, :, sl] for k, v in outputs.items()}
        per_group.append(loss_fn(out_g, batch)[1])
    # Box terms: sum over groups / (groups * boxes) = mean over groups. The CE is a weighted
    # mean over all queries whose weights are the same in every group, so it is the mean too.
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        expected = np.mean([float(m[key]) for m in per_group])
        np.testing.assert_allclose(float(metrics[key]), expected, rtol=1e-5)
    np.testing.assert_allclose(
        float(loss), np.mean([float(m["loss"]) for m in per_group]), rtol=1e-5
    )


def test_model_runs_all_groups_in_training_and_group_zero_in_eval():
    config = tiny_config(**{"model.queries.num_groups": 3})
    model = build_model(config)
    images = jnp.zeros((2, 32, 32, 3))
    pixel_mask = jnp.ones((2, 32, 32), bool)
    variables = jit_once(lambda r: init_variables(model, (32, 32), r))(jax.random.PRNGKey(0))
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))  # eager is ~10x slower
    q = config.model.queries.num_queries
    assert variables["params"]["group_query_embed"].shape == (2 * q, config.model.hidden_dim)
    out_eval = apply(variables, images, pixel_mask, train=False)
    assert out_eval["pred_logits"].shape[2] == q
    out_train, _ = apply(
        variables, images, pixel_mask, train=True, mutable=("batch_stats",),
        rngs={"dropout": jax.random.PRNGKey(1), "droppath": jax.random.PRNGKey(2)},
    )
    assert out_train["pred_logits"].shape[2] == 3 * q
    # Block-diagonal self-attention: changing the other groups' queries leaves group 0 alone.
    params = dict(variables["params"])
    params["group_query_embed"] = params["group_query_embed"] + 1.0
    out_moved, _ = apply(
        dict(variables, params=params), images, pixel_mask, train=True, mutable=("batch_stats",),
        rngs={"dropout": jax.random.PRNGKey(1), "droppath": jax.random.PRNGKey(2)},
    )
    np.testing.assert_allclose(
        out_moved["pred_boxes"][:, :, :q], out_train["pred_boxes"][:, :, :q], atol=1e-6
    )
    assert not np.allclose(out_moved["pred_boxes"][:, :, q:], out_train["pred_boxes"][:, :, q:])
    # The criterion folds the training output (3 groups) and leaves the eval output alone.
    assert out_train["num_query_groups"] == 3 and out_eval["num_query_groups"] == 1
    batch = {
        "image": images,
        "pixel_mask": pixel_mask,
        "labels": jnp.zeros((2, 2), jnp.int32),
        "boxes": jnp.full((2, 2, 4), 0.5),
        "box_valid": jnp.array([[True, False], [True, True]]),
        "size": jnp.full((2, 2), 32, jnp.int32),
    }
    criterion = build_criterion(tiny_config(**{"matcher.name": "hungarian_scipy"}))
    for out, groups in ((out_train, 3), (out_eval, 1)):
        # jit returned num_query_groups as an array: give the criterion the int again.
        arrays = {k: v for k, v in out.items() if k != "num_query_groups"}
        loss_fn = jax.jit(lambda o, g=groups: criterion(dict(o, num_query_groups=g), batch)[0])
        assert np.isfinite(float(loss_fn(arrays)))
