"""bfloat16 compute, rematerialisation and the attention implementations on the tiny model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from detr_jax import train
from detr_jax.data.batching import collate
from detr_jax.data.shapes import STANDARD_SHAPES, generate_sample
from detr_jax.inference import Predictor
from detr_jax.losses import build_criterion
from detr_jax.models import build_model, init_variables

# Each test compiles its own train step or model variant (15-50 s on 2 cores): the full suite.
pytestmark = pytest.mark.slow


def _batch(config, n=2):
    samples = [generate_sample(STANDARD_SHAPES, 7, i) for i in range(n)]
    batch, _ = collate(samples, buckets=config.image_buckets, max_boxes=config.max_boxes)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    # The second image padded: a real key-padding mask in every attention.
    batch["pixel_mask"] = batch["pixel_mask"].at[1, 60:, :].set(False)
    return batch


def _variables(config, batch, seed=0):
    model = build_model(config)
    return model, init_variables(model, batch["image"].shape[1:3], jax.random.PRNGKey(seed))


def _criterion(config):
    """The config's criterion with the exact scipy matcher (the default)."""
    config = config.copy_and_resolve_references()
    config.matcher.name = "hungarian_scipy"
    return build_criterion(config)


def _loss_and_grads(config, variables, batch):
    """Training-mode loss and parameter gradients (dropout rng fixed, batch stats mutable)."""
    model = build_model(config)
    criterion = _criterion(config)
    rngs = {"dropout": jax.random.PRNGKey(3), "droppath": jax.random.PRNGKey(4)}

    def loss_fn(params):
        out, _ = model.apply(
            {**variables, "params": params}, batch["image"], batch["pixel_mask"], train=True,
            rngs=rngs, mutable=["batch_stats"],
        )
        return criterion(out, batch)[0]

    return jax.jit(jax.value_and_grad(loss_fn))(variables["params"])


@pytest.fixture(scope="module")
def ref():
    """fp32, einsum attention, no remat, no dropout: config, batch, variables, eval outputs,
    training loss and gradients (shared by the comparisons below)."""
    config = tiny_config(**{"model.transformer.dropout": 0.0})
    batch = _batch(config)
    model, variables = _variables(config, batch)
    out = jax.jit(model.apply)(variables, batch["image"], batch["pixel_mask"])
    loss, grads = _loss_and_grads(config, variables, batch)
    return config, batch, variables, out, loss, grads


def _variant(**overrides):
    return tiny_config(**{"model.transformer.dropout": 0.0, **overrides})


def test_bfloat16_forward_is_float32_out_close_to_float32_and_params_stay_float32(ref):
    config, batch, variables, out32, _, _ = ref
    model16, variables16 = _variables(_variant(**{"model.dtype": "bfloat16"}), batch)
    for leaf in jax.tree.leaves(variables16):
        assert leaf.dtype == jnp.float32
    out = jax.jit(model16.apply)(variables, batch["image"], batch["pixel_mask"])
    for k in ("pred_logits", "pred_boxes"):
        assert out[k].dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(out[k])))
        err = np.abs(np.asarray(out[k]) - np.asarray(out32[k])).max()
        scale = np.abs(np.asarray(out32[k])).max()
        assert err <= 0.05 * scale + 0.02, (k, err, scale)


def test_bfloat16_train_step_has_finite_loss_and_float32_state(ref):
    config = _variant(**{"model.dtype": "bfloat16"})
    model = build_model(config)
    rng = jax.random.PRNGKey(0)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    state = train.create_train_state(config, model, tx, rng)
    step = jax.jit(
        functools.partial(
            train.train_step, model=model, tx=tx, schedule=schedule,
            criterion=_criterion(config),
        )
    )
    for _ in range(2):
        state, metrics = step(state, ref[1])
        assert np.isfinite(float(metrics["loss"])) and float(metrics["nonfinite"]) == 0.0
    for leaf in jax.tree.leaves((state.params, state.batch_stats)):
        assert leaf.dtype == jnp.float32


def _assert_same_loss_and_grads(ref, config, rtol=1e-4, atol=1e-5):
    """Loss to 1e-6 relative; each gradient leaf to rtol plus an atol scaled by the leaf's largest
    entry (float32 sums taken in another order differ by ~1e-7 of the summed magnitude)."""
    _, batch, variables, _, loss, grads = ref
    loss_v, grads_v = _loss_and_grads(config, variables, batch)
    assert abs(float(loss) - float(loss_v)) <= 1e-6 * max(1.0, abs(float(loss)))
    assert jax.tree.structure(grads) == jax.tree.structure(grads_v)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_v), strict=True):
        a = np.asarray(a)
        scaled_atol = atol * max(1.0, float(np.abs(a).max()) / 10.0)
        np.testing.assert_allclose(a, np.asarray(b), rtol=rtol, atol=scaled_atol)


def test_remat_gives_the_same_loss_and_gradients(ref):
    """Backbone (trainable BN: batch_stats are mutable inside the remat), encoder, decoder."""
    remat = {"model.backbone.remat": True, "model.transformer.remat_encoder": True,
             "model.transformer.remat_decoder": True}
    _assert_same_loss_and_grads(ref, _variant(**remat))


@pytest.mark.slow
def test_remat_with_dropout_gives_the_same_loss_and_gradients():
    config = tiny_config(**{"model.transformer.dropout": 0.1, "model.transformer.drop_path": 0.1})
    batch = _batch(config)
    _, variables = _variables(config, batch)
    loss, grads = _loss_and_grads(config, variables, batch)
    remat = {"model.backbone.remat": True, "model.transformer.remat_encoder": True,
             "model.transformer.remat_decoder": True}
    config_r = tiny_config(**{"model.transformer.dropout": 0.1,
                              "model.transformer.drop_path": 0.1, **remat})
    _assert_same_loss_and_grads((config, batch, variables, None, loss, grads), config_r)


def test_dot_product_attention_matches_einsum_path(ref):
    """Eval outputs, training loss and gradients within 1e-5 (padded keys in the batch)."""
    _, batch, variables, out, _, _ = ref
    config = _variant(**{"model.transformer.attention_impl": "dot_product"})
    got = jax.jit(build_model(config).apply)(variables, batch["image"], batch["pixel_mask"])
    for k in ("pred_logits", "pred_boxes"):
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(out[k]), atol=1e-5)
    _assert_same_loss_and_grads(ref, config, rtol=1e-5, atol=1e-5)


def test_attention_maps_still_come_out_with_dot_product_attention(ref):
    """The Predictor asks for `intermediates`: the explicit path runs and sows the weights."""
    variables = ref[2]
    model = build_model(_variant(**{"model.transformer.attention_impl": "dot_product"}))
    image = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    out = Predictor(model, variables)(image, score_threshold=0.0)
    assert out["cross_attention"].shape[0] == len(out["queries"]) > 0
    np.testing.assert_allclose(out["cross_attention"].sum(axis=(1, 2)), 1.0, atol=1e-4)
