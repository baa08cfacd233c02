"""Parameter groups as ordered regex rules (detr_jax/optim.py): first match wins, every config
rule must match a parameter, "frozen" means exactly zero updates, lr multipliers scale Adam's
step, and the backbone's own rules freeze exactly what `frozen_stages` and FrozenBN say."""

from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from detr_jax import optim, train
from detr_jax.config_base import base_config
from detr_jax.models import build_model, variable_shapes


def _hand_params():
    rng = np.random.default_rng(0)
    leaf = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return {
        "backbone": {"stem": {"kernel": leaf(3, 3)}, "block": {"kernel": leaf(3, 3),
                                                              "bias": leaf(3)}},
        "head": {"kernel": leaf(3, 3), "bias": leaf(3)},
    }


def _optim_cfg(**overrides):
    o = base_config().optim
    o.lr, o.schedule, o.clip_norm, o.weight_decay = 1e-3, "constant", 0.0, 0.0
    for k, v in overrides.items():
        o[k] = v
    return o


def _flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


def test_first_matching_rule_wins_and_unmatched_params_train_at_lr_x1():
    rules = [("^backbone/stem/", "frozen"), ("^backbone/", 0.1), ("kernel$", 2.0)]
    labels = _flat(optim.param_labels(_hand_params(), rules))
    assert labels == {
        "backbone/stem/kernel": "frozen",  # rule 0 (rule 1 and 2 also match)
        "backbone/block/kernel": "lr_x0.1",  # rule 1 (rule 2 also matches)
        "backbone/block/bias": "lr_x0.1",
        "head/kernel": "lr_x2",
        "head/bias": "lr_x1",  # no rule
    }
    # The order decides: the same rules reversed.
    labels = _flat(optim.param_labels(_hand_params(), rules[::-1]))
    assert labels["backbone/stem/kernel"] == "lr_x2" and labels["backbone/block/bias"] == "lr_x0.1"


@pytest.fixture(scope="module")
def tiny_model_shapes():
    config = tiny_config()
    model = build_model(config)
    return model, variable_shapes(model, tuple(config.image_buckets[0]))["params"]


def test_a_config_rule_matching_no_parameter_names_its_index(tiny_model_shapes):
    model, shapes = tiny_model_shapes
    config = tiny_config(**{"optim.param_rules": [("^backbone/", 0.1), ("^backbon/", 2.0)]})
    with pytest.raises(optim.ParamRuleError) as e:
        optim.optimizer_rules(config, model, shapes)
    msg = str(e.value)
    assert "optim.param_rules[1]" in msg and "'^backbon/'" in msg, msg
    assert "optim.param_rules[0]" not in msg, msg
    # The training entry point checks the same rules against the model's real paths.
    with pytest.raises(optim.ParamRuleError, match=re.escape("optim.param_rules[1]")):
        train.make_optimizer_for(config, model, jax.random.PRNGKey(0))
    # A bad value or a bad regex is named the same way.
    config = tiny_config(**{"optim.param_rules": [("^backbone/", -1.0), ("(", 1.0)]})
    with pytest.raises(optim.ParamRuleError) as e:
        optim.optimizer_rules(config, model, shapes)
    assert "optim.param_rules[0]: value -1.0" in str(e.value)
    assert "optim.param_rules[1]: pattern '('" in str(e.value)


def test_frozen_params_get_exactly_zero_updates_after_a_step():
    params = _hand_params()
    # Weight decay on: a frozen param must not even decay.
    tx, _ = optim.make_optimizer(_optim_cfg(weight_decay=0.1, clip_norm=0.1), 10, params,
                                 [("^backbone/block/", "frozen")])
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.cos(p) + 2.0, params)
    new_params = params
    for _ in range(2):
        updates, state = tx.update(grads, state, new_params)
        new_params = optax.apply_updates(new_params, updates)
        for key, u in _flat(updates).items():
            if key.startswith("backbone/block/"):
                np.testing.assert_array_equal(np.asarray(u), 0.0, err_msg=key)
            else:
                assert np.all(np.asarray(u) != 0.0), key
    for key, p in _flat(new_params).items():
        same = np.array_equal(np.asarray(p), np.asarray(_flat(params)[key]))
        assert same == key.startswith("backbone/block/"), key


def test_an_lr_multiplier_scales_the_first_adam_update_exactly():
    """Adam's first update is -lr * g / (|g| + eps) (bias-corrected moments m = g, v = g^2):
    the same gradient in a x0.1 group and a x1 group gives updates in the ratio 0.1."""
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    params = {"backbone": {"w": x}, "head": {"w": x}}
    lr = 1e-3
    tx, _ = optim.make_optimizer(_optim_cfg(lr=lr), 10, params, [("^backbone/", 0.1)])
    grads = jax.tree.map(lambda p: p * 3.0, params)  # mixed signs and sizes, same in both
    updates, _ = tx.update(grads, tx.init(params), params)
    head, backbone = np.asarray(updates["head"]["w"]), np.asarray(updates["backbone"]["w"])
    g = np.asarray(grads["head"]["w"], np.float64)
    # float32 bias corrections (1 - 0.999 has a relative rounding error ~3e-5, halved by sqrt).
    np.testing.assert_allclose(head, -lr * g / (np.abs(g) + 1e-8), rtol=2e-5)
    np.testing.assert_allclose(backbone / head, 0.1, rtol=1e-6)


def _expected_backbone_frozen(paths: list[str]) -> set[str]:
    """By hand: frozen_stages=2 freezes the stem (conv1, bn1) and layer1; FrozenBatchNorm
    modules (those holding running statistics among their params) are frozen everywhere."""
    frozen_bn = {p.rsplit("/", 1)[0] for p in paths if p.endswith("/running_mean")}
    out = set()
    for p in paths:
        parts = p.split("/")
        if parts[0] != "backbone":
            continue
        stage = parts[1]
        if stage in ("conv1", "bn1") or stage.startswith("layer1_"):
            out.add(p)
        elif p.rsplit("/", 1)[0] in frozen_bn:
            out.add(p)
    return out


def test_the_backbones_own_rules_freeze_the_frozen_stages_and_every_frozen_bn_array():
    config = tiny_config(**{"model.backbone.norm": "frozen_bn",
                            "model.backbone.frozen_stages": 2})
    model = build_model(config)
    shapes = variable_shapes(model, tuple(config.image_buckets[0]))["params"]
    labels = _flat(optim.param_labels(shapes, optim.optimizer_rules(config, model, shapes)))
    frozen = {k for k, lab in labels.items() if lab == "frozen"}
    expected = _expected_backbone_frozen(list(labels))
    assert frozen == expected, (sorted(frozen - expected), sorted(expected - frozen))
    # What the hand list holds: stem and layer1 whole, later stages' norms but not their convs.
    assert {"backbone/conv1/kernel", "backbone/bn1/weight", "backbone/layer1_1/conv2/kernel",
            "backbone/layer2_0/bn1/running_var", "backbone/layer2_0/downsample_1/bias"} <= frozen
    assert "backbone/layer2_0/conv1/kernel" not in frozen
    assert "backbone/layer2_0/downsample_0/kernel" not in frozen
    assert not any(k.startswith("transformer/") for k in frozen)
