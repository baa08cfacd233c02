"""configs/dino_coco.py and configs/shapes_dino.py: every variant builds and validates, the COCO
recipe carries DINO-4scale's published values, and the lr groups follow the recipe."""

from __future__ import annotations

import flax
import pytest
from test_deformable_configs import load

from detr_jax import optim
from detr_jax.config_dino import VARIANTS
from detr_jax.losses import loss_problems
from detr_jax.models import build_model, model_problems, variable_shapes


@pytest.mark.parametrize("variant", VARIANTS)
def test_coco_recipe(variant):
    c = load("dino_coco", variant)
    assert model_problems(c) == [] and loss_problems(c) == []
    t, q = c.model.transformer, c.model.queries
    assert (t.name, t.enc_layers, t.dec_layers, t.dim_feedforward, t.dropout) == (
        "dino", 6, 6, 2048, 0.0)
    assert (q.num_queries, q.dn_number, q.label_noise_ratio, q.box_noise_scale) == (
        900, 100, 0.5, 1.0)
    assert c.eval.top_k == 300 and c.model.neck.extra_levels == 1 and c.batch_size == 16
    dino = variant != "dn"
    assert (q.mixed, q.contrastive, t.look_forward_twice, t.select_by) == (
        dino, dino, dino, "max" if dino else "first")
    assert q.num_groups == (3 if variant == "dino_groups" else 1)
    assert c.loss.encoder_class_agnostic == (not dino)  # DINO's proposals loss has the labels
    assert dict(c.matcher.costs) == {"focal_class": 2.0, "bbox": 5.0, "giou": 2.0}
    assert dict(c.loss.weights) == {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0,
                                    "loss_ce_dn": 1.0, "loss_bbox_dn": 5.0, "loss_giou_dn": 2.0}
    assert (c.optim.lr, c.optim.weight_decay, c.optim.clip_norm) == (1e-4, 1e-4, 0.1)
    assert dict(c.optim.param_rules) == {"^backbone/": 0.1, "sampling_offsets": 0.1}


@pytest.mark.parametrize("arg", ["dn", "dino_groups_ema"])
def test_shapes_variants_build(arg):
    c = load("shapes_dino", arg)
    assert model_problems(c) == [] and loss_problems(c) == []
    assert (c.optim.ema_decay > 0) == arg.endswith("_ema")
    model = build_model(c)
    params = variable_shapes(model, (96, 96))["params"]
    labels = flax.traverse_util.flatten_dict(
        optim.param_labels(params, optim.optimizer_rules(c, model, params)), sep="/")
    assert {v for k, v in labels.items() if "sampling_offsets" in k} == {"lr_x0.1"}
    assert "transformer/ref_point_head/layers_0/kernel" in labels
    assert ("tgt_embed" in labels) == (arg != "dn")  # mixed selection's learned content


def test_bad_variant_is_one_line():
    with pytest.raises(ValueError, match="dino_coco.py:dab; choose one of"):
        load("dino_coco", "dab")
