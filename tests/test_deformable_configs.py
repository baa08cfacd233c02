"""configs/deformable_coco.py and configs/shapes_deformable.py: every variant builds, its loss
and parts validate, and the parameter groups give the backbone, sampling offsets and reference
points x0.1 (the original's lr_backbone and lr_linear_proj_mult)."""

from __future__ import annotations

import importlib.util
import os

import flax
import pytest

from detr_jax import optim
from detr_jax.config_deformable import VARIANTS
from detr_jax.losses import loss_problems
from detr_jax.models import build_model, model_problems, variable_shapes

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(name: str, arg: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("variant", VARIANTS)
def test_coco_recipe(variant):
    c = load("deformable_coco", variant)
    assert model_problems(c) == [] and loss_problems(c) == []
    t = c.model.transformer
    assert (t.enc_layers, t.dec_layers, t.dim_feedforward, t.enc_points, t.nheads) == (
        6, 6, 1024, 4, 8)
    assert (t.box_refine, t.two_stage) == (variant != "plain", variant == "two_stage")
    assert c.model.queries.num_queries == 300 and c.model.neck.extra_levels == 1
    assert dict(c.matcher.costs) == {"focal_class": 2.0, "bbox": 5.0, "giou": 2.0}
    assert dict(c.loss.weights) == {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert (c.optim.lr, c.optim.weight_decay, c.optim.clip_norm) == (2e-4, 1e-4, 0.1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_variant_param_groups(variant):
    c = load("shapes_deformable", variant)
    assert model_problems(c) == [] and loss_problems(c) == []
    model = build_model(c)
    params = variable_shapes(model, (96, 96))["params"]
    labels = flax.traverse_util.flatten_dict(
        optim.param_labels(params, optim.optimizer_rules(c, model, params)), sep="/")
    offsets = {v for k, v in labels.items() if "sampling_offsets" in k}
    assert offsets == {"lr_x0.1"}
    refs = {v for k, v in labels.items() if "reference_points" in k}
    assert refs == (set() if variant == "two_stage" else {"lr_x0.1"})
    assert {v for k, v in labels.items() if k.startswith("backbone/")} <= {"lr_x2.5", "frozen"}
    assert labels["transformer/decoder_layers_0/cross_attn/value_proj/kernel"] == "lr_x1"


def test_bad_variant_is_one_line():
    with pytest.raises(ValueError, match="variant 'twostage'; choose one of"):
        load("deformable_coco", "twostage")


def test_the_demo_is_the_two_stage_shapes_recipe_without_encoder_and_wider():
    demo, two_stage = load("shapes", ""), load("shapes_deformable", "two_stage")
    assert model_problems(demo) == [] and loss_problems(demo) == []
    assert (demo.model.transformer.enc_layers, demo.model.backbone.width, demo.total_steps) == (
        0, 32, 4200)
    two_stage.model.transformer.enc_layers = 0
    two_stage.model.backbone.width = 32
    two_stage.total_steps = 4200
    assert demo.to_dict() == two_stage.to_dict()
    assert load("shapes", "vanilla").to_dict() == load("shapes_vanilla", "").to_dict()
    with pytest.raises(ValueError, match="configs/shapes.py:dino; choose"):
        load("shapes", "dino")
