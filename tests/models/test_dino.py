"""The DINO-style detector's parts: denoising split and masking inside the model, Group DETR
groups on shared anchors, look-forward-twice gradients, configuration checks, and mixed query
selection against HF Deformable DETR's two-stage selection."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_dino_config import tiny_dino

from detr_jax.losses import build_criterion
from detr_jax.models import build_model, model_problems


def inputs(num_objects=(2, 0), seed=0):
    """Two 64x64 images (the second padded to 48x40) and up to 3 ground-truth slots."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    mask = np.ones((2, 64, 64), bool)
    mask[1, 48:] = False
    mask[1, :, 40:] = False
    boxes = np.concatenate([rng.uniform(0.3, 0.7, (2, 3, 2)), rng.uniform(0.1, 0.3, (2, 3, 2))],
                           -1).astype(np.float32)
    valid = np.arange(3)[None] < np.asarray(num_objects)[:, None]
    targets = {"labels": rng.integers(0, 6, (2, 3)).astype(np.int32), "boxes": boxes,
               "box_valid": valid}
    return jnp.asarray(images), jnp.asarray(mask), {k: jnp.asarray(v) for k, v in targets.items()}


@pytest.fixture(scope="module")
def dino():
    config = tiny_dino()
    model = build_model(config)
    images, mask, _ = inputs()
    variables = model.init(jax.random.PRNGKey(0), images, mask, train=False)
    return config, model, variables


def _train_apply(model, variables, images, mask, targets, seed=1):
    out, _ = model.apply(variables, images, mask, train=True, targets=targets,
                         rngs={"dropout": jax.random.PRNGKey(seed)}, mutable=["batch_stats"])
    return out


@pytest.mark.slow  # 69 with its fixture s alone on 2 cores (2026-12-02; default budget 6 min)
def test_training_outputs_split_denoising_and_groups(dino):
    config, model, variables = dino
    images, mask, targets = inputs()
    out = _train_apply(model, variables, images, mask, targets)
    # 12 // (2 * 3 slots) = 2 denoising groups of 6; 2 Group DETR groups of 6 queries.
    assert out["dn_outputs"]["pred_logits"].shape == (2, 2, 12, 6)
    assert out["pred_logits"].shape == (2, 2, 12, 6) and out["pred_boxes"].shape == (2, 2, 12, 4)
    assert int(out["num_query_groups"]) == 2 and out["dn_meta"]["dn_groups"] == 2
    positive = np.asarray(out["dn_meta"]["dn_positive"])
    assert positive[0].sum() == 2 * 2 and positive[1].sum() == 0  # 2 objects x 2 groups; none
    evaluated = model.apply(variables, images, mask, train=False)
    assert evaluated["pred_logits"].shape == (2, 2, 6, 6) and "dn_outputs" not in evaluated
    # The set loss, denoising terms included, is finite also for the image without objects.
    loss, metrics = build_criterion(config)(out, dict(targets))
    assert np.isfinite(float(loss)) and float(metrics["loss_bbox_dn"]) > 0
    empty = dict(targets, box_valid=jnp.zeros_like(targets["box_valid"]))
    loss, metrics = build_criterion(config)(_train_apply(model, variables, images, mask, empty),
                                            empty)
    assert np.isfinite(float(loss)) and float(metrics["loss_bbox_dn"]) == 0.0


def test_matching_queries_do_not_see_the_denoising_ones(dino):
    _, model, variables = dino
    images, mask, targets = inputs()
    a = _train_apply(model, variables, images, mask, targets)
    moved = dict(targets, boxes=targets["boxes"][:, ::-1], labels=(targets["labels"] + 1) % 6)
    b = _train_apply(model, variables, images, mask, moved)
    assert np.abs(np.asarray(a["dn_outputs"]["pred_logits"] - b["dn_outputs"]["pred_logits"])
                  ).max() > 1e-3
    for key in ("pred_logits", "pred_boxes"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=1e-6)


def test_groups_do_not_see_each_other(dino):
    _, model, variables = dino
    images, mask, targets = inputs()
    params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    params["tgt_embed"] = params["tgt_embed"].at[6:].add(1.0)  # group 1's content only
    changed = {**variables, "params": flax.traverse_util.unflatten_dict(params, sep="/")}
    a = _train_apply(model, variables, images, mask, targets)
    b = _train_apply(model, changed, images, mask, targets)
    # (Logits: at init the box heads' last layer is zero, so every box equals its anchor.)
    np.testing.assert_allclose(np.asarray(a["pred_logits"][:, :, :6]),
                               np.asarray(b["pred_logits"][:, :, :6]), atol=1e-6)
    assert np.abs(np.asarray(a["pred_logits"][:, :, 6:] - b["pred_logits"][:, :, 6:])).max() > 1e-4


@pytest.mark.slow  # 42 s alone on 2 cores (2026-12-02); the default budget is 6 min
@pytest.mark.parametrize("look_forward_twice", [True, False])
def test_look_forward_twice_reaches_the_previous_box_head(look_forward_twice):
    config = tiny_dino(look_forward_twice=look_forward_twice, share_heads=False)
    model = build_model(config)
    images, mask, _ = inputs()
    variables = model.init(jax.random.PRNGKey(0), images, mask, train=False)

    def last_layer_boxes(params):
        return model.apply({**variables, "params": params}, images, mask)["pred_boxes"][1].sum()

    grads = jax.grad(last_layer_boxes)(variables["params"])
    g0 = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["bbox_embed_0"]))
    assert float(jnp.abs(grads["bbox_embed_1"]["layers_2"]["bias"]).max()) > 0
    assert (g0 > 0) == look_forward_twice


def test_configuration_problems_name_the_fields():
    c = tiny_dino(select_by="best")
    c.model.queries.mixed = False  # groups need learned content
    lines = model_problems(c)
    assert any("select_by='best'" in x for x in lines)
    assert any("num_groups > 1 needs model.queries.mixed" in x for x in lines)
    c = tiny_dino()
    c.model.queries = {"name": "encoder_proposals", "num_queries": 6}
    assert any("needs model.queries.name='dino'" in x for x in model_problems(c))
    c = tiny_dino()
    c.model.neck = {"name": "single_level", "level": "C5"}
    assert any("name='dino' needs model.neck.name='multi_scale'" in x for x in model_problems(c))
