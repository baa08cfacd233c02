"""models/conv.py: the GEMM kernel gradient and the folded FrozenBatchNorm against XLA's own."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from detr_jax.models import build_model, init_variables
from detr_jax.models.backbones.resnet import conv_norm
from detr_jax.models.conv import conv_gemm_wgrad


def _xla_conv(x, w, stride, pad, dilation):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@pytest.mark.parametrize(
    "k,stride,pad,dilation",
    [(1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (7, 2, 3, 1)],
)
def test_gemm_kernel_gradient_matches_xla(k, stride, pad, dilation):
    """Same output, input gradient and kernel gradient (odd sizes: windows end off the grid)."""
    rng = np.random.default_rng(k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, 13, 11, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 5, 6)), jnp.float32)

    def loss(conv):
        def f(x_, w_):
            y = conv(x_, w_, stride, pad, dilation)
            return jnp.sum(jnp.sin(y))  # a non-uniform output gradient
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, w)

    (v_ref, (dx_ref, dw_ref)) = loss(_xla_conv)
    (v, (dx, dw)) = loss(conv_gemm_wgrad)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_model_with_gemm_gradients_and_folded_bn_matches_the_default():
    """Frozen BN with non-trivial statistics: same parameter tree, outputs and gradients.

    Slow (two model compiles, ~25 s); the unit tests above cover each piece by default."""
    base = {"model.backbone.norm": "frozen_bn", "model.transformer.dropout": 0.0}
    config = tiny_config(**base)
    fast = tiny_config(**base, **{"model.backbone.conv_weight_grad": "gemm",
                                  "model.backbone.fold_bn": True})
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
    mask = jnp.ones((2, 64, 64), bool).at[1, 40:].set(False)
    model, model_fast = build_model(config), build_model(fast)
    params = init_variables(model, (64, 64), jax.random.PRNGKey(0))["params"]
    params_fast = init_variables(model_fast, (64, 64), jax.random.PRNGKey(0))["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, params_fast)

    # Random frozen statistics, so that folding has something to fold.
    stats_rng = np.random.default_rng(1)

    def randomise(path, leaf):
        name = jax.tree_util.keystr(path)
        if "running_var" in name:
            return jnp.asarray(stats_rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        if any(s in name for s in ("running_mean", "'bias'", "'weight'")) and "backbone" in name:
            return jnp.asarray(stats_rng.normal(size=leaf.shape) * 0.3 + (
                1.0 if "weight" in name else 0.0), leaf.dtype)
        return leaf

    params = jax.tree_util.tree_map_with_path(randomise, params)

    def loss_and_grads(m):
        def f(p):
            out = m.apply({"params": p}, images, mask, train=True,
                          rngs={"dropout": jax.random.PRNGKey(1)})
            return jnp.sum(out["pred_logits"] ** 2) + jnp.sum(out["pred_boxes"])
        return jax.jit(jax.value_and_grad(f))(params)

    loss, grads = loss_and_grads(model)
    loss_fast, grads_fast = loss_and_grads(model_fast)
    np.testing.assert_allclose(loss_fast, loss, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads),
                            jax.tree.leaves(grads_fast), strict=True):
        a = np.asarray(a)
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(np.asarray(b), a, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=jax.tree_util.keystr(path))


class _ConvNorm(nn.Module):
    fold: bool

    @nn.compact
    def __call__(self, x):
        return conv_norm(x, None, features=6, k=3, conv_name="conv", norm_name="bn",
                         norm="frozen_bn", stride=2, fold_bn=self.fold, weight_grad="gemm")


def test_folded_frozen_bn_matches_conv_then_bn():
    """Same parameter tree; random frozen statistics; same output and kernel gradient."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
    params = _ConvNorm(False).init(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(
        _ConvNorm(True).init(jax.random.PRNGKey(0), x)["params"])
    params["bn"] = {
        "weight": jnp.asarray(rng.uniform(0.5, 1.5, 6), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=6), jnp.float32),
        "running_mean": jnp.asarray(rng.normal(size=6), jnp.float32),
        "running_var": jnp.asarray(rng.uniform(0.5, 2.0, 6), jnp.float32),
    }

    def run(fold):
        def f(p):
            return jnp.sum(jnp.sin(_ConvNorm(fold).apply({"params": p}, x)))
        return jax.value_and_grad(f)(params)

    (v, g), (v_fold, g_fold) = run(False), run(True)
    np.testing.assert_allclose(v_fold, v, rtol=1e-5)
    np.testing.assert_allclose(g_fold["conv"]["kernel"], g["conv"]["kernel"], rtol=1e-4, atol=1e-5)


def test_unknown_weight_grad_is_a_config_error():
    with pytest.raises(ValueError, match="model.backbone.conv_weight_grad"):
        build_model(tiny_config(**{"model.backbone.conv_weight_grad": "fft"}))
