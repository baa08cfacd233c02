"""The DETR model: backbone -> 1x1 input projection -> transformer -> class and box heads.

Parameter tree (mirrors the original's state_dict): `backbone/...`, `input_proj`, `query_embed`,
`transformer/...`, `class_embed`, `bbox_embed/layers_{0,1,2}`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.models.backbone import ResNet
from detr_jax.models.position_encoding import (
    POSITION_EMBEDDING_CHOICES,
    LearnedPositionEmbedding,
    sine_position_embedding,
)
from detr_jax.models.query_groups import group_self_attn_mask
from detr_jax.models.transformer import Transformer


def _torch_linear_bias_init(fan_in: int):
    """PyTorch nn.Linear/Conv default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# PyTorch nn.Linear/Conv default kernel init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
_torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_dense(features: int, fan_in: int, name: str, dtype: Any = None) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=_torch_kernel_init,
        bias_init=_torch_linear_bias_init(fan_in),
        dtype=dtype,
        name=name,
    )


def resize_mask_nearest(mask: jax.Array, h: int, w: int) -> jax.Array:
    """bool [B, H, W] -> [B, h, w] as torch `F.interpolate(mode="nearest")`: row i takes source
    row floor(i * H / h) (float32 arithmetic), as DETR's backbone resizes its padding mask."""

    def index(n_in: int, n_out: int) -> np.ndarray:
        scale = np.float32(n_in) / np.float32(n_out)
        idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
        return np.minimum(idx, n_in - 1)

    return mask[:, index(mask.shape[1], h)][:, :, index(mask.shape[2], w)]


class MLP(nn.Module):
    """num_layers Dense layers with ReLU between them (DETR's box head: 3 layers)."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    input_dim: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = self.input_dim
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = _torch_dense(
                self.output_dim if last else self.hidden_dim, fan_in, f"layers_{i}", self.dtype
            )(x)
            fan_in = self.hidden_dim
            if not last:
                x = nn.relu(x)
        return x


class DETR(nn.Module):
    """End-to-end detector.

    Attributes mirror the original's arguments; see `configs/coco.py` for the paper's values.
    """

    num_classes: int
    num_queries: int = 100
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    drop_path: float = 0.0
    pre_norm: bool = False
    backbone_depth: int = 50
    backbone_width: int = 64
    backbone_norm: str = "frozen_bn"
    dilation: bool = False
    feature_level: str = "C5"
    backbone_frozen_stages: int = 0
    zero_init_residual: bool = False
    mask_backbone_features: bool = True
    position_embedding: str = "sine"
    query_init_std: float = 1.0
    dense_aux_head: bool = False
    num_query_groups: int = 1  # Group DETR: >1 adds training-only query groups
    dtype: Any = None  # compute dtype (bfloat16: bf16 matmuls/convs, float32 params and heads)
    attention_impl: str = "xla"  # xla | dot_product | cudnn (models/transformer.py)
    remat_backbone: bool = False
    remat_encoder: bool = False
    remat_decoder: bool = False
    conv_weight_grad: str = "xla"  # xla | gemm (models/conv.py)
    fold_frozen_bn: bool = False

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        pixel_mask: jax.Array,
        train: bool = False,
        extra_queries: jax.Array | None = None,
        self_attn_mask: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Predicts a set of boxes per image.

        Args:
          images: float [B, H, W, 3], normalised; pixel_mask: bool [B, H, W], True on real pixels.
          train: dropout, DropPath and BatchNorm statistics in training mode.
          extra_queries: optional [B, Qx, D] query embeddings appended after the learned ones
            (hook for DN-DETR denoising groups); their outputs follow the learned queries.
          self_attn_mask: optional [B or 1, Q+Qx, Q+Qx] decoder self-attention mask.
          With `num_query_groups` K > 1 and `train`, Q above is K * num_queries: the training
          groups of detr_jax/models/query_groups.py, with their block-diagonal mask.

        Returns:
          `pred_logits` float32 [L, B, Q(+Qx), num_classes + 1] (last index = no object) and
          `pred_boxes` float32 [L, B, Q(+Qx), 4] normalised cxcywh, one slice per decoder layer;
          with `dense_aux_head` also `dense_logits` [B, h, w, num_classes + 1] and `dense_mask`.
        """
        feats = ResNet(
            depth=self.backbone_depth,
            width=self.backbone_width,
            norm=self.backbone_norm,
            dilation=self.dilation,
            frozen_stages=self.backbone_frozen_stages,
            zero_init_residual=self.zero_init_residual,
            mask_features=self.mask_backbone_features,
            return_levels=(self.feature_level,),
            dtype=self.dtype,
            remat=self.remat_backbone,
            conv_weight_grad=self.conv_weight_grad,
            fold_bn=self.fold_frozen_bn,
            name="backbone",
        )(images, pixel_mask, train=train)
        x, mask = feats[self.feature_level]
        b, h, w, c = x.shape
        if not self.mask_backbone_features:
            # As the original (and HF): the feature mask is the pixel mask resized (nearest).
            # It equals the strided mask above whenever the canvas is a multiple of the stride.
            mask = resize_mask_nearest(pixel_mask, h, w)

        if self.position_embedding == "sine":
            pos = sine_position_embedding(mask, self.hidden_dim)
        elif self.position_embedding == "learned":
            pos = LearnedPositionEmbedding(self.hidden_dim, name="position_embedding")(mask)
        else:
            raise ValueError(
                f"model.position_embedding={self.position_embedding!r}; "
                f"choose one of {POSITION_EMBEDDING_CHOICES}"
            )
        src = nn.Conv(
            self.hidden_dim,
            (1, 1),
            kernel_init=_torch_kernel_init,
            bias_init=_torch_linear_bias_init(c),
            dtype=self.dtype,
            name="input_proj",
        )(x)
        src = src.reshape(b, h * w, self.hidden_dim)
        pos = pos.reshape(b, h * w, self.hidden_dim).astype(src.dtype)
        src_mask = mask.reshape(b, h * w)

        query_embed = self.param(
            "query_embed",
            nn.initializers.normal(self.query_init_std),
            (self.num_queries, self.hidden_dim),
        )
        query_pos = jnp.broadcast_to(
            query_embed.astype(src.dtype)[None], (b, self.num_queries, self.hidden_dim)
        )
        if self.num_query_groups > 1:
            # Created in both modes so that the param tree does not depend on `train`.
            group_embed = self.param(
                "group_query_embed",
                nn.initializers.normal(self.query_init_std),
                ((self.num_query_groups - 1) * self.num_queries, self.hidden_dim),
            )
            if train:
                if extra_queries is not None or self_attn_mask is not None:
                    raise NotImplementedError(
                        "model.num_query_groups > 1 cannot be combined with extra_queries or "
                        "self_attn_mask yet"
                    )
                query_pos = jnp.concatenate(
                    [query_pos, jnp.broadcast_to(group_embed.astype(src.dtype)[None],
                                                 (b,) + group_embed.shape)],
                    axis=1,
                )
                self_attn_mask = group_self_attn_mask(self.num_query_groups, self.num_queries)
        if extra_queries is not None:
            query_pos = jnp.concatenate([query_pos, extra_queries.astype(src.dtype)], axis=1)

        hs, _ = Transformer(
            hidden_dim=self.hidden_dim,
            num_heads=self.nheads,
            num_encoder_layers=self.enc_layers,
            num_decoder_layers=self.dec_layers,
            dim_feedforward=self.dim_feedforward,
            dropout=self.dropout,
            drop_path=self.drop_path,
            pre_norm=self.pre_norm,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            remat_encoder=self.remat_encoder,
            remat_decoder=self.remat_decoder,
            name="transformer",
        )(src, src_mask, pos, query_pos, self_attn_mask=self_attn_mask, train=train)

        # The heads run in float32 whatever `dtype` (they are a tiny share of the FLOPs, and
        # box regression and the matching costs want the precision).
        hs = hs.astype(jnp.float32)
        f32 = jnp.float32
        logits = _torch_dense(self.num_classes + 1, self.hidden_dim, "class_embed", f32)(hs)
        boxes = MLP(self.hidden_dim, 4, 3, self.hidden_dim, f32, name="bbox_embed")(hs)
        outputs = {"pred_logits": logits, "pred_boxes": jax.nn.sigmoid(boxes)}
        if self.dense_aux_head:
            # Per-position class logits on the backbone feature (see detr_jax/dense_loss.py).
            dense = _torch_dense(self.num_classes + 1, c, "dense_class_head", f32)(
                x.astype(f32)
            )
            outputs["dense_logits"] = dense.astype(jnp.float32)
            outputs["dense_mask"] = mask
        return outputs
