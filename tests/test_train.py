"""Training tests: overfit two images, exact checkpoint round trip, non-finite guard, optimiser."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from detr_jax import optim, train
from detr_jax.core import checkpointing
from detr_jax.data.batching import collate
from detr_jax.data.shapes import STANDARD_SHAPES, generate_sample
from detr_jax.evaluation.postprocess import postprocess
from detr_jax.losses import build_criterion
from detr_jax.models import build_model, variable_shapes
from detr_jax.ops.box_ops import box_cxcywh_to_xyxy, pairwise_iou


def _setup(config):
    model = build_model(config)
    rng = jax.random.PRNGKey(config.seed)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    state = train.create_train_state(config, model, tx, rng)
    return model, tx, schedule, state


def _two_image_batch(config):
    samples = [generate_sample(STANDARD_SHAPES, 123, i) for i in range(2)]
    batch, _ = collate(samples, buckets=config.image_buckets, max_boxes=config.max_boxes)
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.fixture(scope="module")
def tiny():
    """One tiny config, model, initial state and jitted train step shared by the tests below."""
    config = tiny_config(**{"model.transformer.dropout": 0.0, "optim.lr": 1e-3})
    model, tx, schedule, state = _setup(config)
    step = jax.jit(
        functools.partial(
            train.train_step,
            model=model,
            tx=tx,
            schedule=schedule,
            criterion=build_criterion(tiny_config(**{"matcher.name": "hungarian_scipy"})),
        )
    )
    apply = jax.jit(lambda v, x, m: model.apply(v, x, m))
    return config, model, state, step, apply, _two_image_batch(config)


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_tiny_model_overfits_two_images(tiny):
    config, model, state, step, apply, batch = tiny
    losses = []
    for _ in range(300):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.15 * losses[0], (losses[0], losses[-1])
    # Every ground-truth box is found by a confident prediction of the right class.
    out = apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"],
        batch["pixel_mask"],
    )
    probs = jax.nn.softmax(out["pred_logits"][-1], -1)
    for b in range(2):
        valid = np.asarray(batch["box_valid"][b])
        gt = box_cxcywh_to_xyxy(batch["boxes"][b][valid])
        pred = box_cxcywh_to_xyxy(out["pred_boxes"][-1, b])
        iou, _ = pairwise_iou(gt, pred)
        best = np.asarray(jnp.argmax(iou, axis=1))
        assert np.all(np.asarray(jnp.max(iou, axis=1)) > 0.6)
        labels = np.asarray(batch["labels"][b][valid])
        assert np.all(np.asarray(jnp.argmax(probs[b, best], -1)) == labels)


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_checkpoint_round_trips_exactly(tiny, tmp_path):
    config, _, state, step, _, batch = tiny
    # Take one real step so the optimiser state is non-trivial.
    state, _ = step(state, batch)
    manager = checkpointing.make_manager(str(tmp_path), every=1, keep=2)
    assert checkpointing.save(manager, 1, state, config.to_json(), force=True)
    manager.wait_until_finished()
    _, _, _, template = _setup(tiny_config(seed=99))
    restored, meta = checkpointing.restore_latest(manager, template)
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), state, restored
    )
    assert all(jax.tree.leaves(same))
    assert jax.tree.structure(state) == jax.tree.structure(restored)
    assert meta["param_shapes"]["query_embed"] == [10, 32]

    # An incompatible config fails with the mismatched paths listed.
    _, _, _, other = _setup(tiny_config(**{"model.hidden_dim": 64}))
    with pytest.raises(ValueError, match="query_embed"):
        checkpointing.restore_latest(manager, other)


def test_nonfinite_batch_skips_the_update(tiny):
    _, _, state, step, _, batch = tiny
    batch = dict(batch, image=batch["image"].at[0, 0, 0, 0].set(jnp.nan))
    new_state, metrics = step(state, batch)
    assert float(metrics["nonfinite"]) == 1.0
    assert int(new_state.step) == int(state.step) + 1
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), state.params, new_state.params)
    assert all(jax.tree.leaves(same))


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_frozen_parameters_get_exactly_zero_updates_and_backbone_lr_multiplier():
    config = tiny_config(
        **{
            "model.backbone.norm": "frozen_bn",
            "model.backbone.frozen_stages": 2,
            "optim.weight_decay": 0.0,
            "optim.param_rules": [("^backbone/", 0.1)],
            "optim.clip_norm": 0.0,
            "optim.lr": 1e-3,
        }
    )
    model, tx, _, state = _setup(config)
    labels = optim.param_labels(state.params, optim.optimizer_rules(config, model, state.params))
    assert labels["backbone"]["conv1"]["kernel"] == "frozen"
    assert labels["backbone"]["layer1_0"]["conv1"]["kernel"] == "frozen"
    assert labels["backbone"]["layer2_0"]["conv1"]["kernel"] == "lr_x0.1"
    assert labels["backbone"]["layer2_0"]["bn1"]["running_var"] == "frozen"
    assert labels["backbone"]["layer2_0"]["bn1"]["weight"] == "frozen"
    assert labels["class_embed"]["kernel"] == "lr_x1"
    # Trainable norms (from scratch) are trained, biases included.
    bn_config = tiny_config(**{"model.backbone.norm": "bn",
                               "optim.param_rules": [("^backbone/", 0.1)]})
    bn_model = build_model(bn_config)
    bn_params = variable_shapes(bn_model, tuple(bn_config.image_buckets[0]))["params"]
    bn_labels = optim.param_labels(
        bn_params, optim.optimizer_rules(bn_config, bn_model, bn_params))
    assert bn_labels["backbone"]["layer2_0"]["bn1"]["bias"] == "lr_x0.1"
    assert bn_labels["backbone"]["bn1"]["scale"] == "lr_x0.1"
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), state.params)
    updates, _ = tx.update(grads, state.opt_state, state.params)
    flat_u = jax.tree.leaves(updates)
    flat_l = jax.tree.leaves(labels)
    for u, lab in zip(flat_u, flat_l, strict=True):
        # First Adam step: m/sqrt(v) = 1, so the update is -lr (x mult), or exactly 0 if frozen.
        expected = {"frozen": 0.0, "lr_x0.1": -1e-4, "lr_x1": -1e-3}[lab]
        np.testing.assert_allclose(
            np.asarray(u), expected, rtol=1e-4, atol=0 if lab == "frozen" else 1e-9
        )


def test_lr_schedules():
    c = tiny_config(
        **{
            "optim.lr": 1e-3,
            "optim.warmup_steps": 10,
            "optim.schedule": "cosine",
            "optim.final_lr_factor": 0.0,
        }
    )
    s = optim.make_schedule(c.optim, 110)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(60)), 5e-4, rtol=1e-5)  # half-way through the cosine
    np.testing.assert_allclose(float(s(110)), 0.0, atol=1e-9)
    c.optim.schedule = "step"
    c.optim.lr_drop_step = 50
    s = optim.make_schedule(c.optim, 110)
    np.testing.assert_allclose(float(s(49)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(50)), 1e-4, rtol=1e-6)


def test_postprocess_of_model_output_in_pixels(tiny):
    _, _, state, _, apply, batch = tiny
    out = apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"],
        batch["pixel_mask"],
    )
    post = postprocess(
        out["pred_logits"][-1], out["pred_boxes"][-1], jnp.array([[480, 640], [96, 96]]), 5
    )
    assert post["boxes"].shape == (2, 5, 4)
    assert float(post["boxes"][0, :, 2].max()) <= 640 * 1.5 + 1e-3
    assert bool(jnp.all(post["scores"][:, :-1] >= post["scores"][:, 1:]))


def test_schedule_lr_is_logged_per_step():
    config = tiny_config(**{"optim.warmup_steps": 4, "optim.schedule": "cosine"})
    _, tx, schedule, _ = _setup(config)
    assert isinstance(tx, optax.GradientTransformation)
    assert float(schedule(2)) == pytest.approx(config.optim.lr / 2)
