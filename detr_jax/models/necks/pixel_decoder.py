"""Mask2Former's pixel decoder (MSDeformAttnPixelDecoder): a deformable encoder over the three
deepest levels, then an FPN step down to stride 4 and the per-pixel mask features.

    C5, C4, C3 -> 1x1 conv + GroupNorm each -> + sine position + level embedding
               -> `enc_layers` deformable encoder layers (Deformable DETR's, 4 points)
               -> three refined maps (the masked-attention decoder's memory, coarsest first)
    C2         -> 1x1 conv (no bias) + GN, + the finest refined map upsampled (bilinear,
                  PyTorch's align_corners=False), 3x3 conv (no bias) + GN + ReLU
               -> 1x1 conv to `mask_dim`: `mask_features` [B, H/4, W/4, mask_dim]

Padding: as the original (facebookresearch/Mask2Former) and Hugging Face, the pixel decoder
treats the whole padded canvas as image: every token is real (`mask` all True, valid ratios 1)
and the sine embedding counts positions over the canvas (1..h, normalised by h, no pixel-centre
offset). The postprocessor and the mask-derived boxes crop to the real pixels.

Levels are ordered coarsest first (C5, C4, C3), as the original: decoder layer l reads level
l % 3, so the first layer attends to stride 32. With `levels` naming more than
`encoder_levels` backbone levels, the finer ones are FPN steps (coarse to fine); the last one's
output gives the mask features.

Params (in the detector's scope, under `pixel_decoder/`): `input_proj_{i}/{conv,norm}` (i = 0:
the coarsest), `level_embed` [3, D], `encoder_layers_{n}/{self_attn/{sampling_offsets,
attention_weights,value_proj,output_proj},norm1,ffn/{linear1,linear2},norm2}`,
`adapter_{k}/{conv,norm}` and `layer_{k}/{conv,norm}` (k = 1: the finest FPN level, as HF's
names), `mask_projection/{kernel,bias}`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.models.backbones.base import Feature
from detr_jax.models.necks.multi_scale import ConvNorm, InputProjection
from detr_jax.models.position_encoding import sine_position_embedding
from detr_jax.ops.interpolate import resize_bilinear

# detectron2's c2_xavier_fill (kaiming uniform, a = 1), the original's FPN convolutions.
_c2_xavier = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def _canvas_sine(b: int, h: int, w: int, d: int) -> jax.Array:
    """The sine position embedding of an all-real h x w canvas: float32 [B, h * w, D]."""
    return sine_position_embedding(jnp.ones((b, h, w), bool), d).reshape(b, h * w, d)


class PixelDecoder(nn.Module):
    """The pixel decoder's layers (see the module docstring); the neck below names it."""

    hidden_dim: int
    mask_dim: int
    levels: tuple[str, ...]
    encoder_levels: int
    enc_layers: int
    nheads: int
    enc_points: int
    dim_feedforward: int
    dropout: float
    num_groups: int
    remat_sampling: bool
    sampling_chunk: int
    dtype: Any

    @nn.compact
    def __call__(self, feats: dict[str, Feature], train: bool) -> dict[str, Any]:
        # Local import: models.transformers imports models.necks (two_stage reads valid_counts).
        from detr_jax.models.transformers.deformable import DeformableEncoderLayer
        from detr_jax.models.transformers.deformable_attention import encoder_reference_points

        d, n_enc = self.hidden_dim, self.encoder_levels
        enc_names = tuple(self.levels[-n_enc:])[::-1]  # coarsest first
        fpn_names = tuple(self.levels[:-n_enc])  # finest first
        maps = [InputProjection(d, num_groups=self.num_groups, dtype=self.dtype,
                                name=f"input_proj_{i}")(feats[name].features)
                for i, name in enumerate(enc_names)]
        level_embed = self.param("level_embed", nn.initializers.normal(1.0), (n_enc, d))
        b = maps[0].shape[0]
        shapes = tuple((int(x.shape[1]), int(x.shape[2])) for x in maps)
        tokens = jnp.concatenate([x.reshape(b, h * w, d) for x, (h, w) in zip(maps, shapes,
                                                                             strict=True)], 1)
        pos = jnp.concatenate([_canvas_sine(b, h, w, d) + level_embed[lvl]
                               for lvl, (h, w) in enumerate(shapes)], 1).astype(tokens.dtype)
        ratios = jnp.ones((b, n_enc, 2), jnp.float32)
        refs = encoder_reference_points(shapes, ratios)
        x = tokens
        for i in range(self.enc_layers):
            x = DeformableEncoderLayer(
                hidden_dim=d, num_heads=self.nheads, num_levels=n_enc, num_points=self.enc_points,
                dim_feedforward=self.dim_feedforward, dropout=self.dropout, dtype=self.dtype,
                remat_sampling=self.remat_sampling, sampling_chunk=self.sampling_chunk,
                name=f"encoder_layers_{i}")(x, pos, refs, None, shapes, not train)
        starts = tuple(int(s) for s in np.cumsum([0] + [h * w for h, w in shapes])[:-1])
        outs = [x[:, s:s + h * w].reshape(b, h, w, d)
                for s, (h, w) in zip(starts, shapes, strict=True)]
        y = outs[-1]  # the finest encoder level
        for k in range(len(fpn_names), 0, -1):  # coarse to fine; k = 1 is the finest
            lateral = ConvNorm(d, 1, relu=False, num_groups=self.num_groups, dtype=self.dtype,
                               kernel_init=_c2_xavier, name=f"adapter_{k}")(
                                   feats[fpn_names[k - 1]].features)
            y = lateral + resize_bilinear(y, lateral.shape[1:3], axes=(1, 2)).astype(lateral.dtype)
            y = ConvNorm(d, 3, relu=True, num_groups=self.num_groups, dtype=self.dtype,
                         kernel_init=_c2_xavier, name=f"layer_{k}")(y)
        mask_features = nn.Conv(self.mask_dim, (1, 1), kernel_init=_c2_xavier,
                                bias_init=nn.initializers.zeros, dtype=self.dtype,
                                name="mask_projection")(y)
        return {
            "tokens": x,
            "pos": pos,
            "mask": jnp.ones(x.shape[:2], bool),
            "spatial_shapes": shapes,
            "level_start": starts,
            "valid_ratios": ratios,
            "mask_features": mask_features,
        }


class PixelDecoderNeck(nn.Module):
    """Mask2Former's pixel decoder as a neck: backbone levels -> multi-scale memory + mask features.

    Attributes:
      hidden_dim: D, the pixel decoder's width (HF `feature_size`; set by the builder).
      mask_dim: channels of `mask_features` (HF `mask_feature_size`).
      levels: the backbone levels read, finest first: the last `encoder_levels` go through the
        deformable encoder, the others are FPN steps (Mask2Former: C2 | C3, C4, C5).
      encoder_levels: how many of the deepest levels the encoder refines (3, as the original).
      enc_layers, nheads, enc_points, dim_feedforward, dropout: the deformable encoder's layers
        (6, 8, 4, 1024, 0.0 in Mask2Former).
      num_groups: GroupNorm groups (32).
      remat_sampling, sampling_chunk: memory options of the deformable sampling (same results;
        see transformers/deformable_attention.py).
      dtype: compute dtype (set by the builder).
    """

    hidden_dim: int = 256
    mask_dim: int = 256
    levels: tuple[str, ...] = ("C2", "C3", "C4", "C5")
    encoder_levels: int = 3
    enc_layers: int = 6
    nheads: int = 8
    enc_points: int = 4
    dim_feedforward: int = 1024
    dropout: float = 0.0
    num_groups: int = 32
    remat_sampling: bool = False
    sampling_chunk: int = 0
    dtype: Any = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        super().__post_init__()

    def problems(self) -> list[str]:
        """One line per bad field (checked when the neck is built)."""
        f = "model.neck"
        lines = []
        if not 1 <= self.encoder_levels <= len(self.levels):
            lines.append(f"{f}.encoder_levels={self.encoder_levels} must be between 1 and the "
                         f"{len(self.levels)} levels of {f}.levels={tuple(self.levels)}")
        if self.hidden_dim % self.num_groups:
            lines.append(f"model.hidden_dim={self.hidden_dim} must be divisible by "
                         f"{f}.num_groups={self.num_groups}")
        if self.hidden_dim % self.nheads:
            lines.append(f"model.hidden_dim={self.hidden_dim} must be divisible by "
                         f"{f}.nheads={self.nheads}")
        for name in ("mask_dim", "enc_points", "dim_feedforward"):
            if int(getattr(self, name)) < 1:
                lines.append(f"{f}.{name}={getattr(self, name)} must be positive")
        return lines

    @property
    def input_levels(self) -> tuple[str, ...]:
        """The backbone levels this neck reads (the builder asks the backbone for them)."""
        return tuple(self.levels)

    @nn.compact
    def __call__(self, feats: dict[str, Feature], train: bool = False) -> dict[str, Any]:
        """{level: Feature} -> the decoder's memory (docs/interfaces.md, "Neck"):
        `tokens` [B, N, D] (the encoder's output, levels coarsest first), `pos` [B, N, D] (the
        encoder's sine + level embedding), `mask` bool [B, N] (all True), `spatial_shapes`
        ((h_l, w_l), ... coarsest first), `level_start`, `valid_ratios` float32 [B, L, 2]
        (ones), `mask_features` [B, h, w, mask_dim] at the finest level's stride (4 with C2)
        and `mask_stride` (that stride, a Python int)."""
        missing = [lv for lv in self.levels if lv not in feats]
        if missing:
            raise ValueError(f"model.neck.levels={tuple(self.levels)}: the backbone returned "
                             f"no {missing}")
        out = PixelDecoder(
            self.hidden_dim, self.mask_dim, tuple(self.levels), self.encoder_levels,
            self.enc_layers, self.nheads, self.enc_points, self.dim_feedforward, self.dropout,
            self.num_groups, self.remat_sampling, self.sampling_chunk, self.dtype,
            name="pixel_decoder")(feats, train)
        out["mask_stride"] = int(feats[self.levels[0]].stride)
        return out
