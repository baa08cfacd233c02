"""MaskFormer's parts built from a config: output shapes, stop-gradient boxes, the padding
switch of the neck, and bad configs (HF parity: test_maskformer_parity.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.config_base import base_config, set_field
from detr_jax.models import PartConfigError, build_model, init_variables, variable_shapes


def maskformer_config(**neck):
    c = base_config()
    c.num_classes = 4
    set_field(c, "model.hidden_dim", 32)
    set_field(c, "model.backbone", {"name": "resnet18", "width": 8, "norm": "frozen_bn",
                                    "mask_features": False})
    set_field(c, "model.neck", {"name": "maskformer_fpn", "conv_dim": 32, "mask_dim": 24,
                                **neck})
    set_field(c, "model.transformer", {"name": "detr", "nheads": 4, "enc_layers": 0,
                                       "dec_layers": 2, "dim_feedforward": 64, "dropout": 0.0})
    set_field(c, "model.queries", {"name": "learned", "num_queries": 7})
    set_field(c, "model.heads", {"name": "maskformer"})
    return c


def init(model, seed=0):
    """init_variables under jit (eagerly the tiny model takes half a minute to initialise)."""
    return jax.jit(lambda r: init_variables(model, (64, 64), r))(jax.random.PRNGKey(seed))


def _batch(canvas=(101, 123), real=(70, 90)):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, *canvas, 3)).astype(np.float32)
    mask = np.zeros((2, *canvas), bool)
    mask[0] = True
    mask[1, :real[0], :real[1]] = True
    return images, mask


@pytest.mark.slow  # 12 s alone on 2 cores (2026-12-02; default budget 6 min)
def test_outputs_at_stride_4():
    model = build_model(maskformer_config())
    variables = init(model)
    images, mask = _batch()
    out = jax.jit(lambda v: model.apply(v, images, mask))(variables)
    assert out["pred_logits"].shape == (2, 2, 7, 5)  # [L, B, Q, C + 1]
    assert out["pred_masks"].shape == (2, 2, 7, 26, 31)  # ceil(101 / 4), ceil(123 / 4)
    assert out["pred_boxes"].shape == (2, 2, 7, 4)
    boxes = np.asarray(out["pred_boxes"])
    assert np.all((boxes >= 0) & (boxes <= 1))



@pytest.mark.slow
def test_boxes_carry_no_gradient():
    model = build_model(maskformer_config())
    variables = init(model)
    images, mask = _batch((64, 64), (40, 50))

    def box_sum(params):
        return jnp.sum(model.apply({**variables, "params": params}, images, mask)["pred_boxes"])

    grads = jax.jit(jax.grad(box_sum))(variables["params"])
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(grads))


@pytest.mark.slow  # 12 s on a loaded 2-core run; the parity tests cover the path
def test_padding_reaches_the_decoder_only_with_mask_padding():
    """As the original (and HF), the default ignores the padding: the same canvas gives the
    same logits and masks whatever the pixel mask; `mask_padding=True` masks the keys."""
    images, mask = _batch()
    full = np.ones_like(mask)
    results = {}
    for mask_padding in (False, True):
        model = build_model(maskformer_config(mask_padding=mask_padding))
        variables = init(model, 1)
        apply = jax.jit(lambda v, m, model=model: model.apply(v, images, m))
        a, b = apply(variables, mask), apply(variables, full)
        results[mask_padding] = float(jnp.abs(a["pred_logits"] - b["pred_logits"]).max())
        if not mask_padding:
            np.testing.assert_array_equal(a["pred_masks"], b["pred_masks"])
    assert results[False] == 0.0 and results[True] > 1e-3


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match=r"model\.neck\.conv_dim=48"):
        build_model(maskformer_config(conv_dim=48))
    with pytest.raises(ValueError, match=r"model\.neck\.enc_layers=-1"):
        build_model(maskformer_config(enc_layers=-1))
    with pytest.raises(ValueError, match=r"model\.neck\.input_proj=False"):
        build_model(maskformer_config(enc_layers=1, input_proj=False, conv_dim=64))
    with pytest.raises(PartConfigError, match=r"model\.neck\.level"):
        build_model(maskformer_config(level="C4"))
    c = maskformer_config()
    set_field(c, "model.neck", {"name": "single_level"})
    model = build_model(c)
    with pytest.raises(ValueError, match="mask_features"):
        variable_shapes(model)
