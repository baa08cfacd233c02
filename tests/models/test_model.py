"""Model tests: position embedding against a loop reference, padding invariance, shapes."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from detr_jax.core.compile_options import jit_once
from detr_jax.models import build_model, init_variables
from detr_jax.models.backbones.resnet import ResNet
from detr_jax.models.position_encoding import sine_position_embedding


def _sine_reference(mask: np.ndarray, d: int) -> np.ndarray:
    """DETR's PositionEmbeddingSine written as plain loops (independent of the jnp version)."""
    b, h, w = mask.shape
    f = d // 2
    out = np.zeros((b, h, w, d))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                y = mask[n, : i + 1, j].sum() / (mask[n, :, j].sum() + 1e-6) * 2 * math.pi
                x = mask[n, i, : j + 1].sum() / (mask[n, i, :].sum() + 1e-6) * 2 * math.pi
                for k in range(f):
                    t = 10000 ** (2 * (k // 2) / f)
                    fn = math.sin if k % 2 == 0 else math.cos
                    out[n, i, j, k] = fn(y / t)
                    out[n, i, j, f + k] = fn(x / t)
    return out


def test_sine_embedding_matches_loop_reference():
    mask = np.zeros((2, 5, 6), bool)
    mask[0, :4, :3] = True
    mask[1] = True
    got = np.asarray(sine_position_embedding(jnp.asarray(mask), 16))
    np.testing.assert_allclose(got, _sine_reference(mask, 16), atol=1e-5)


def test_sine_embedding_ignores_padding():
    small = jnp.ones((1, 3, 4), bool)
    big = jnp.zeros((1, 7, 9), bool).at[:, :3, :4].set(True)
    a = sine_position_embedding(small, 8)
    b = sine_position_embedding(big, 8)[:, :3, :4]
    np.testing.assert_allclose(a, b, atol=1e-6)


def _init(model, image_hw, rng):
    return jit_once(lambda r: init_variables(model, image_hw, r))(rng)


def _randomised_variables(model, rng, images, mask):
    """Init, then give every norm non-trivial statistics so the padding test has teeth."""
    del mask
    variables = _init(model, images.shape[1:3], rng)
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    noisy = [
        leaf + 0.2 * jax.random.normal(k, leaf.shape) if leaf.ndim == 1 else leaf
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    variables = jax.tree.unflatten(treedef, noisy)
    # Variances must stay positive.
    return jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.abs(v) + 0.5 if ("var" in str(p[-1])) else v, variables
    )


@pytest.mark.parametrize(
    "norm", [pytest.param("bn", marks=pytest.mark.slow), pytest.param("gn", marks=pytest.mark.slow),
             "frozen_bn"])
def test_padding_invariance_eval_mode(norm):
    """One image, alone and padded into a larger canvas: the same predictions (<= 1e-4)."""
    config = tiny_config(**{"model.backbone.norm": norm, "model.backbone.dilation": norm == "bn"})
    model = build_model(config)
    h, w = 70, 50
    image = jax.random.normal(jax.random.PRNGKey(0), (1, h, w, 3))
    mask = jnp.ones((1, h, w), bool)
    variables = _randomised_variables(model, jax.random.PRNGKey(1), image, mask)
    padded = jnp.zeros((1, 96, 128, 3)).at[:, :h, :w].set(image)
    padded_mask = jnp.zeros((1, 96, 128), bool).at[:, :h, :w].set(True)
    apply = jax.jit(model.apply)  # one compile per shape; eager dispatch is far slower
    a = apply(variables, image, mask)
    b = apply(variables, padded, padded_mask)
    for k in ("pred_logits", "pred_boxes"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=f"{norm} {k}")


def test_padding_changes_output_without_feature_masking():
    """The invariance above comes from the feature masking: without it, padding leaks."""
    config = tiny_config(**{"model.backbone.mask_features": False})
    model = build_model(config)
    image = jax.random.normal(jax.random.PRNGKey(0), (1, 70, 50, 3))
    variables = _randomised_variables(
        model, jax.random.PRNGKey(1), image, jnp.ones((1, 70, 50), bool)
    )
    padded = jnp.zeros((1, 96, 128, 3)).at[:, :70, :50].set(image)
    pm = jnp.zeros((1, 96, 128), bool).at[:, :70, :50].set(True)
    apply = jax.jit(model.apply)
    a = apply(variables, image, jnp.ones((1, 70, 50), bool))["pred_boxes"]
    b = apply(variables, padded, pm)["pred_boxes"]
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_output_shapes_and_ranges():
    config = tiny_config()
    model = build_model(config)
    images = jnp.zeros((2, 96, 96, 3))
    mask = jnp.ones((2, 96, 96), bool).at[1, 60:].set(False)
    variables = _init(model, (96, 96), jax.random.PRNGKey(0))
    out = jax.jit(model.apply)(variables, images, mask)
    L, Q = config.model.transformer.dec_layers, config.model.queries.num_queries
    C = config.num_classes
    assert out["pred_logits"].shape == (L, 2, Q, C + 1)
    assert out["pred_boxes"].shape == (L, 2, Q, 4)
    assert bool(jnp.all((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)))
    assert bool(jnp.all(jnp.isfinite(out["pred_logits"])))
    # Query embeddings N(0, 1) as in the original.
    std = float(jnp.std(variables["params"]["query_embed"]))
    assert 0.7 < std < 1.3


@pytest.mark.parametrize(
    "depth,dilation,stride,channels",
    [(18, False, 32, 64), (18, True, 16, 64),
     pytest.param(50, False, 32, 256, marks=pytest.mark.slow)],
)
def test_backbone_strides_and_channels(depth, dilation, stride, channels):
    net = ResNet(depth=depth, width=8, norm="gn", dilation=dilation, return_levels=("C4", "C5"))
    x = jnp.zeros((1, 64, 96, 3))
    m = jnp.ones((1, 64, 96), bool)
    out, _ = jit_once(net.init_with_output)({"params": jax.random.PRNGKey(0)}, x, m)
    feats, fmask, feat_stride = out["C5"]
    assert feats.shape == (1, 64 // stride, 96 // stride, channels)
    assert fmask.shape == feats.shape[:3]
    assert feat_stride == stride
    assert out["C4"][0].shape[1] == 64 // 16
    assert out["C4"].stride == 16


@pytest.mark.parametrize("dilation,stride", [(False, 16), (True, 8)])
def test_backbone_stops_at_the_deepest_level_asked_for(dilation, stride):
    """C4 alone: layer4 is not built, and dilation then applies to layer3 (stride 8)."""
    net = ResNet(depth=18, width=8, norm="bn", dilation=dilation, return_levels=("C4",))
    x = jnp.zeros((1, 64, 96, 3))
    out, variables = net.init_with_output(
        {"params": jax.random.PRNGKey(0)}, x, jnp.ones((1, 64, 96), bool)
    )
    assert out["C4"][0].shape == (1, 64 // stride, 96 // stride, 32)
    assert not any(k.startswith("layer4") for k in variables["params"])
    with pytest.raises(ValueError, match="return_levels"):
        ResNet(depth=18, width=8, return_levels=("C6",)).init(
            {"params": jax.random.PRNGKey(0)}, x, jnp.ones((1, 64, 96), bool)
        )


def test_empty_pixel_mask_is_finite():
    """A filler image (no real pixels) must not produce NaN."""
    config = tiny_config()
    model = build_model(config)
    images = jnp.zeros((1, 96, 96, 3))
    mask = jnp.zeros((1, 96, 96), bool)
    variables = _init(model, (96, 96), jax.random.PRNGKey(0))
    out = jax.jit(model.apply)(variables, images, mask)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
