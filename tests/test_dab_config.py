"""DAB-DETR's config: `config_dab.dab_detr` and configs/dab_coco.py validate with the paper's
recipe, and a tiny DAB-DETR takes one jitted train step (focal loss through every layer, the
anchors and the shared box head trained)."""

from __future__ import annotations

import functools
import importlib.util
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from detr_jax import optim, train
from detr_jax.config_dab import dab_detr
from detr_jax.data.batching import collate
from detr_jax.data.shapes import STANDARD_SHAPES, generate_sample
from detr_jax.losses import build_criterion, loss_problems
from detr_jax.models import build_model, model_problems, variable_shapes

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def test_coco_recipe():
    spec = importlib.util.spec_from_file_location("dab_coco", os.path.join(CONFIGS, "dab_coco.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert model_problems(c) == [] and loss_problems(c) == []
    t, q = c.model.transformer, c.model.queries
    assert (t.name, t.enc_layers, t.dec_layers, t.dim_feedforward, t.nheads) == (
        "dab", 6, 6, 2048, 8)
    assert (t.activation, t.dropout, c.model.neck.temperature) == ("prelu", 0.0, 20.0)
    assert (q.name, q.num_queries, c.model.heads.name) == ("anchors", 300, "deformable")
    assert dict(c.matcher.costs) == {"focal_class": 2.0, "bbox": 5.0, "giou": 2.0}
    assert dict(c.loss.weights) == {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert (c.optim.lr, c.optim.param_rules, c.optim.weight_decay, c.optim.clip_norm) == (
        1e-4, (("^backbone/", 0.1),), 1e-4, 0.1)
    assert c.batch_size == 16 and c.total_steps == 50 * module.STEPS_PER_EPOCH
    assert c.optim.lr_drop_step == 40 * module.STEPS_PER_EPOCH


def tiny_dab():
    c = tiny_config()
    dab_detr(c)
    t = c.model.transformer
    t.nheads, t.enc_layers, t.dec_layers, t.dim_feedforward = 4, 1, 2, 32
    c.model.queries.num_queries = 10
    c.optim.param_rules = ()
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0  # a param moves only with its gradient
    return c


@pytest.mark.slow  # 30 s alone on 2 cores (2026-12-02; default budget 6 min)
def test_tiny_dab_train_step():
    config = tiny_dab()
    assert model_problems(config) == [] and loss_problems(config) == []
    model = build_model(config)
    params = variable_shapes(model, (96, 96))["params"]
    assert params["refpoint_embed"].shape == (10, 4)
    assert "ref_anchor_head" in params["transformer"] and "bbox_embed_1" not in params
    rng = jax.random.PRNGKey(0)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    state = train.create_train_state(config, model, tx, rng)
    samples = [generate_sample(STANDARD_SHAPES, 7, i) for i in range(2)]
    batch, _ = collate(samples, buckets=config.image_buckets, max_boxes=config.max_boxes)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule,
                                     criterion=build_criterion(config)))
    new_state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 0.0
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"} <= set(metrics)
    before = flax.traverse_util.flatten_dict(state.params, sep="/")
    after = flax.traverse_util.flatten_dict(new_state.params, sep="/")
    moved = {k for k in before if np.any(np.asarray(before[k]) != np.asarray(after[k]))}
    for k in ("refpoint_embed", "bbox_embed_0/layers_2/kernel", "class_embed_0/kernel",
              "transformer/ref_anchor_head/layers_1/kernel",
              "transformer/decoder_layers_1/ffn/activation/negative_slope"):
        assert k in moved, k


def test_param_groups_backbone_lr():
    config = tiny_dab()
    config.optim.param_rules = (("^backbone/", 0.1),)
    model = build_model(config)
    params = variable_shapes(model, (96, 96))["params"]
    labels = flax.traverse_util.flatten_dict(
        optim.param_labels(params, optim.optimizer_rules(config, model, params)), sep="/")
    assert {v for k, v in labels.items() if k.startswith("backbone/")} <= {"lr_x0.1", "frozen"}
    assert labels["refpoint_embed"] == labels["transformer/query_scale/layers_0/kernel"] == "lr_x1"
