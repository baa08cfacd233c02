"""Models, picked by name from the config: `build_model(config)`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.backbone import BACKBONE_CHOICES
from detr_jax.models.conv import WEIGHT_GRAD_CHOICES
from detr_jax.models.detr import DETR
from detr_jax.models.transformer import ATTENTION_CHOICES

MODEL_CHOICES = ("detr",)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_model(config: Any) -> DETR:
    """Builds the model named by `config.model.name` (with `config.model`, `config.num_classes`).

    Only attribute access is used, so any namespace with the fields works (no ml_collections
    needed); fields added later (`attention_impl`, `remat_*`, `conv_weight_grad`,
    `fold_frozen_bn`) default when absent.
    """
    m = config.model
    if m.name not in MODEL_CHOICES:
        raise ValueError(f"model.name={m.name!r}; choose one of {MODEL_CHOICES}")
    if m.backbone not in BACKBONE_CHOICES:
        raise ValueError(f"model.backbone={m.backbone!r}; choose one of {BACKBONE_CHOICES}")
    if m.dtype not in _DTYPES:
        raise ValueError(f"model.dtype={m.dtype!r}; choose one of {tuple(_DTYPES)}")
    if getattr(m, "conv_weight_grad", "xla") not in WEIGHT_GRAD_CHOICES:
        raise ValueError(
            f"model.conv_weight_grad={m.conv_weight_grad!r}; choose one of {WEIGHT_GRAD_CHOICES}"
        )
    attention_impl = getattr(m, "attention_impl", "xla")
    if attention_impl not in ATTENTION_CHOICES:
        raise ValueError(
            f"model.attention_impl={attention_impl!r}; choose one of {ATTENTION_CHOICES}"
        )
    return DETR(
        num_classes=config.num_classes,
        num_queries=m.num_queries,
        hidden_dim=m.hidden_dim,
        nheads=m.nheads,
        enc_layers=m.enc_layers,
        dec_layers=m.dec_layers,
        dim_feedforward=m.dim_feedforward,
        dropout=m.dropout,
        drop_path=m.drop_path,
        pre_norm=m.pre_norm,
        backbone_depth=int(m.backbone.removeprefix("resnet")),
        backbone_width=m.backbone_width,
        backbone_norm=m.backbone_norm,
        dilation=m.dilation,
        backbone_frozen_stages=m.backbone_frozen_stages,
        zero_init_residual=m.zero_init_residual,
        mask_backbone_features=m.mask_backbone_features,
        position_embedding=m.position_embedding,
        query_init_std=m.query_init_std,
        dense_aux_head=m.dense_aux_head,
        feature_level=m.feature_level,
        num_query_groups=m.num_query_groups,
        dtype=_DTYPES[m.dtype],
        attention_impl=attention_impl,
        remat_backbone=bool(getattr(m, "remat_backbone", False)),
        remat_encoder=bool(getattr(m, "remat_encoder", False)),
        remat_decoder=bool(getattr(m, "remat_decoder", False)),
        conv_weight_grad=getattr(m, "conv_weight_grad", "xla"),
        fold_frozen_bn=bool(getattr(m, "fold_frozen_bn", False)),
    )


def init_variables(model: nn.Module, image_hw: tuple[int, int], rng: jax.Array) -> dict:
    """The model's variables (`params`, and `batch_stats` with trainable BatchNorm), initialised
    on one zero image of `image_hw` = (H, W) with an all-real pixel mask (inference mode).

    The one initialisation helper: training, inference, conversion checks and the benchmarks
    call it (under `jax.eval_shape` when only the shapes are needed, see `variable_shapes`).
    """
    h, w = image_hw
    images = jnp.zeros((1, h, w, 3), jnp.float32)
    mask = jnp.ones((1, h, w), bool)
    return model.init({"params": rng}, images, mask, train=False)


def variable_shapes(model: nn.Module, image_hw: tuple[int, int] = (64, 64)) -> dict:
    """`init_variables` as `jax.ShapeDtypeStruct`s, without running or compiling the model."""
    return jax.eval_shape(lambda r: init_variables(model, image_hw, r), jax.random.PRNGKey(0))
