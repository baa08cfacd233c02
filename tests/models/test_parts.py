"""Detector parts and loss terms by name: config errors at start-up, a new backbone and a new loss
term added from a test file alone (their module, one registry line, config), and where a part's
config field ends up in the param tree."""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from detr_jax import train
from detr_jax.config_base import set_field
from detr_jax.config_validation import ConfigError, validate_config
from detr_jax.data.batching import collate
from detr_jax.data.shapes import STANDARD_SHAPES, generate_sample
from detr_jax.losses import LOSS_TERMS, LossTerm, build_criterion
from detr_jax.models import BACKBONES, PartConfigError, build_model, variable_shapes
from detr_jax.models.backbones import Feature

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _build_and_validate_errors(config) -> tuple[str, str]:
    """The messages of build_model's and validate_config's start-up errors for `config`."""
    with pytest.raises(PartConfigError) as built:
        build_model(config)
    with pytest.raises(ConfigError) as validated:
        validate_config(config, 1)
    return str(built.value), str(validated.value)


# ---- (a) config errors name the field -------------------------------------------------------


def test_unknown_field_in_a_part_sub_dict_is_a_start_up_error_naming_it():
    config = tiny_config()
    config.model.backbone.widht = 16  # a typo of `width`
    for msg in _build_and_validate_errors(config):
        assert "model.backbone.widht" in msg, msg
        assert "'width'" in msg, msg  # the part's own fields are listed


def test_unknown_part_name_lists_the_choices():
    config = tiny_config(**{"model.backbone.name": "vgg16"})
    for msg in _build_and_validate_errors(config):
        assert "model.backbone.name='vgg16'" in msg, msg
        for choice in ("resnet18", "resnet34", "resnet50", "resnet101"):
            assert choice in msg, msg
    config = tiny_config(**{"model.neck": {"name": "fpn"}})
    for msg in _build_and_validate_errors(config):
        assert "model.neck.name='fpn'" in msg and "single_level" in msg, msg


def test_a_shared_field_inside_a_part_sub_dict_is_rejected():
    config = tiny_config()
    config.model.transformer.hidden_dim = 64  # set once, as model.hidden_dim
    for msg in _build_and_validate_errors(config):
        assert "model.transformer.hidden_dim" in msg and "set by the builder" in msg, msg


# ---- (b) a new backbone: its module, one registry line, its config --------------------------


class ToyTwoConv(nn.Module):
    """Two strided 3x3 convolutions (stride 4, then 8): one level "C5" at stride 32."""

    channels: int = 8
    return_levels: Sequence[str] = ("C5",)
    dtype: Any = None

    @nn.compact
    def __call__(self, images, pixel_mask, train: bool = False) -> dict[str, Feature]:
        del train
        conv = functools.partial(nn.Conv, self.channels, (3, 3), padding=((1, 1), (1, 1)),
                                 dtype=self.dtype)
        # k=3, pad=1: n positions -> ceil(n / s), exactly the positions `mask[::s]` keeps.
        x = nn.relu(conv(strides=(4, 4), name="conv1")(images))
        mask = pixel_mask[:, ::4, ::4]
        x = nn.relu(conv(strides=(8, 8), name="conv2")(x * mask[..., None].astype(x.dtype)))
        mask = mask[:, ::8, ::8]
        return {level: Feature(x, mask, 32) for level in self.return_levels}


@pytest.fixture
def toy_backbone():
    BACKBONES.register("toy_two_conv", ToyTwoConv)
    yield "toy_two_conv"
    BACKBONES.unregister("toy_two_conv")


def _batch(config):
    samples = [generate_sample(STANDARD_SHAPES, 5, i) for i in range(2)]
    batch, _ = collate(samples, buckets=config.image_buckets, max_boxes=config.max_boxes)
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.slow  # 16 s alone on 2 cores (2026-12-02; default budget 6 min)
def test_a_toy_backbone_selected_by_config_trains_in_a_jitted_train_step(toy_backbone):
    config = tiny_config(**{"model.backbone": {"name": toy_backbone, "channels": 8},
                            "optim.weight_decay": 0.0})  # a param moves only with its gradient
    validate_config(config, 1)
    model = build_model(config)
    assert isinstance(model.backbone, ToyTwoConv) and model.backbone.channels == 8
    rng = jax.random.PRNGKey(0)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    state = train.create_train_state(config, model, tx, rng)
    assert set(state.params["backbone"]) == {"conv1", "conv2"}
    step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, schedule=schedule,
                                     criterion=build_criterion(config)))
    new_state, metrics = step(state, _batch(config))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 0.0
    assert float(metrics["grad_norm"]) > 0.0
    # Adam's first update is zero exactly where the gradient is: every toy param has one.
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         state.params["backbone"], new_state.params["backbone"])
    assert all(jax.tree.leaves(moved)), moved


def test_toy_backbone_is_gone_after_the_fixture():
    assert "toy_two_conv" not in BACKBONES
    with pytest.raises(KeyError):
        BACKBONES.unregister("toy_two_conv")


# ---- (c) a new loss term: its function, one registry entry, its config and weight -----------


def mean_box_size(outputs: dict, batch: dict, t: Any, *, power: float = 1.0
                  ) -> dict[str, jax.Array]:
    """`loss_box_size` [L]: the mean predicted box area (w * h) ** power of each layer."""
    del batch, t
    boxes = outputs["pred_boxes"]
    return {"loss_box_size": jnp.mean((boxes[..., 2] * boxes[..., 3]) ** power, axis=(1, 2))}


def test_a_toy_loss_term_reaches_the_total_with_its_weight(monkeypatch):
    monkeypatch.setitem(LOSS_TERMS, "mean_box_size",
                        LossTerm(mean_box_size, True, ("loss_box_size",)))
    rng = np.random.default_rng(0)
    outputs = {
        "pred_logits": jnp.asarray(rng.normal(size=(2, 2, 10, 7)), jnp.float32),
        "pred_boxes": jnp.asarray(rng.uniform(0.1, 0.6, size=(2, 2, 10, 4)), jnp.float32),
    }
    batch = {
        "labels": jnp.array([[0, 3, 1], [5, 0, 0]], jnp.int32),
        "boxes": jnp.asarray(rng.uniform(0.2, 0.6, size=(2, 3, 4)), jnp.float32),
        "box_valid": jnp.array([[True, True, False], [True, False, False]]),
    }
    config = tiny_config()
    base_total, base = jax.jit(build_criterion(config))(outputs, batch)
    weight = 0.7
    config.loss.terms.mean_box_size = {"power": 0.5}
    config.loss.weights.loss_box_size = weight
    validate_config(config, 1)  # the term's setting and weight are known
    total, metrics = jax.jit(build_criterion(config))(outputs, batch)
    boxes = np.asarray(outputs["pred_boxes"], np.float64)
    value = np.sqrt(boxes[..., 2] * boxes[..., 3]).mean(axis=(1, 2))  # [L]
    np.testing.assert_allclose(metrics["loss_box_size"], value[-1], rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_box_size_0"], value[0], rtol=1e-6)
    np.testing.assert_allclose(total - base_total, weight * value.sum(), rtol=1e-5)
    for k in base:  # the other terms' losses and metrics are untouched
        if k != "loss":
            np.testing.assert_array_equal(metrics[k], base[k], err_msg=k)
    # A setting the term does not take is a start-up error naming it.
    set_field(config, "loss.terms.mean_box_size", {"powr": 2.0})
    with pytest.raises(ConfigError, match=r"loss.terms.mean_box_size.powr: not a setting"):
        validate_config(config, 1)


# ---- (d) from a config field to the param it creates ----------------------------------------


def test_num_queries_of_the_shapes_config_sizes_query_embed():
    """`model.queries.num_queries` reaches the params through three functions:
    `build_model` (models/__init__.py) hands `config.model.queries` to
    `Registry.build` (models/registry.py), which passes `num_queries` to `LearnedQueries`
    (models/queries/learned.py), whose `__call__` creates `query_embed` [num_queries, D]."""
    path = os.path.join(ROOT, "configs", "shapes_vanilla.py")
    spec = importlib.util.spec_from_file_location("shapes_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    params = variable_shapes(build_model(config), tuple(config.image_buckets[0]))["params"]
    assert params["query_embed"].shape[0] == config.model.queries.num_queries
    assert params["query_embed"].shape == (config.model.queries.num_queries,
                                           config.model.hidden_dim)
