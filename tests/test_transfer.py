"""Transfer learning: init_from merging, class-head re-initialisation, norm adaptation, freezing."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from random_params import random_variables

from detr_jax import optim
from detr_jax.models import build_model
from detr_jax.pretrained import save_params_checkpoint
from detr_jax.train import TrainState
from detr_jax.transfer import InitFromError, init_from_checkpoint, merge_pretrained


def _variables(config, seed):
    return random_variables(config, seed)


def _flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


@pytest.fixture(scope="module")
def source():
    """A frozen-BN tiny DETR with 6 classes, saved as a params checkpoint."""
    config = tiny_config(**{"model.backbone.norm": "frozen_bn"})
    return config, _variables(config, 1)


def test_all_mode_reinitialises_class_head_for_new_num_classes(source, tmp_path):
    _, src = source
    save_params_checkpoint(str(tmp_path / "ck"), src["params"], {"source": "test"})
    config = tiny_config(
        **{"model.backbone.norm": "frozen_bn", "num_classes": 3, "init_from": str(tmp_path / "ck")}
    )
    fresh = _variables(config, 2)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=fresh["params"],
        batch_stats={},
        opt_state=None,
        rng=jax.random.PRNGKey(0),
    )
    got = _flat(init_from_checkpoint(config, state).params)
    want_src, want_fresh = _flat(src["params"]), _flat(fresh["params"])
    assert got["class_embed/kernel"].shape == (32, 4)  # 3 classes + no-object
    for key in got:
        expect = want_fresh[key] if key.startswith("class_embed/") else want_src[key]
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(expect), err_msg=key)


def test_backbone_mode_and_norm_adaptation(source):
    """Frozen-BN weights into a trainable-BN model: statistics go to batch_stats."""
    _, src = source
    config = tiny_config(**{"model.backbone.norm": "bn"})
    fresh = _variables(config, 3)
    params, stats, report = merge_pretrained(
        fresh["params"], fresh["batch_stats"], src["params"], {}, "backbone"
    )
    p, s, sp = _flat(params), _flat(stats), _flat(src["params"])
    np.testing.assert_array_equal(
        p["backbone/layer1_0/bn1/scale"], sp["backbone/layer1_0/bn1/weight"]
    )
    np.testing.assert_array_equal(
        s["backbone/layer1_0/bn1/mean"], sp["backbone/layer1_0/bn1/running_mean"]
    )
    np.testing.assert_array_equal(p["query_embed"], _flat(fresh["params"])["query_embed"])
    assert all(k.startswith("backbone/") for k in report["loaded"])


def test_shape_mismatch_outside_class_head_is_listed(source):
    _, src = source
    config = tiny_config(**{"model.backbone.norm": "frozen_bn", "model.queries.num_queries": 12})
    fresh = _variables(config, 4)
    with pytest.raises(
        InitFromError, match="query_embed: checkpoint \\(10, 32\\) vs model \\(12, 32\\)"
    ):
        merge_pretrained(fresh["params"], {}, src["params"], {}, "all")


def test_freeze_labels():
    model = build_model(tiny_config())
    shapes = jax.eval_shape(lambda: _variables(tiny_config(), 0))["params"]
    for freeze, trained in (
        ("heads", {"class_embed", "bbox_embed"}),
        ("decoder_and_heads", {"class_embed", "bbox_embed", "query_embed", "transformer/decoder"}),
        ("backbone", {"class_embed", "bbox_embed", "query_embed", "transformer", "input_proj"}),
    ):
        rules = optim.optimizer_rules(tiny_config(freeze=freeze), model, shapes)
        labels = _flat(optim.param_labels(shapes, rules))
        for key, label in labels.items():
            is_trained = any(key.startswith(t) for t in trained)
            assert (label != "frozen") == is_trained, (freeze, key, label)


def test_backbone_frozen_for_first_k_steps_then_trained():
    params = {"backbone": {"w": jnp.ones(3)}, "class_embed": {"kernel": jnp.ones(3)}}
    config = tiny_config(**{"optim.weight_decay": 0.1})
    tx, _ = optim.make_optimizer(config.optim, 100, params, [], freeze_backbone_steps=3)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    history = []
    for _ in range(5):
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        history.append(
            (float(params["backbone"]["w"][0]), float(params["class_embed"]["kernel"][0]))
        )
    assert [h[0] for h in history[:3]] == [1.0, 1.0, 1.0]  # frozen: no step, no weight decay
    assert history[3][0] < 1.0 and history[4][0] < history[3][0]
    assert history[0][1] < 1.0  # the head trains from the first step


def test_dino_class_heads_and_label_embedding_follow_num_classes():
    """Deformable-style per-layer heads (`class_embed_<i>`) and DINO's `label_enc` are sized by
    num_classes: a checkpoint with other classes re-initialises them and loads the rest."""
    from tiny_dino_config import tiny_dino

    src_config, config = tiny_dino(), tiny_dino()
    config.num_classes = 3
    src = random_variables(src_config, 5)["params"]
    fresh = random_variables(config, 6)["params"]
    params, _, report = merge_pretrained(fresh, {}, src, {}, "all")
    got = _flat(params)
    reinit = set(report["reinitialised"])
    assert {"class_embed_0/kernel", "class_embed_1/kernel", "label_enc/embedding"} <= reinit
    assert all(k.startswith(("class_embed_", "label_enc/")) for k in reinit)
    np.testing.assert_array_equal(got["label_enc/embedding"], _flat(fresh)["label_enc/embedding"])
    np.testing.assert_array_equal(got["tgt_embed"], _flat(src)["tgt_embed"])
    model = build_model(config)
    shapes = jax.eval_shape(lambda: random_variables(config, 0))["params"]
    for freeze, trained in (
        ("heads", ("class_embed_", "bbox_embed_")),
        ("decoder_and_heads", ("class_embed_", "bbox_embed_", "transformer/decoder_layers_",
                               "tgt_embed", "label_enc", "transformer/ref_point_head")),
    ):
        frozen_config = config.copy_and_resolve_references()
        frozen_config.freeze = freeze
        rules = optim.optimizer_rules(frozen_config, model, shapes)
        labels = _flat(optim.param_labels(shapes, rules))
        for key, label in labels.items():
            assert (label != "frozen") == key.startswith(trained), (freeze, key, label)

