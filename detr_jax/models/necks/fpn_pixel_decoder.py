"""MaskFormer's neck: an FPN pixel decoder over C2-C5 (the per-pixel embeddings the masks are
read from) beside DETR's single-level input for the transformer decoder.

Pixel decoder (Cheng et al. 2021, the original `BasePixelDecoder`; HF `MaskFormerPixelDecoder`):
a 3x3 conv + GroupNorm + ReLU on C5 (`stem`), then for C4, C3 and C2 in turn a lateral 1x1 conv
+ GroupNorm, the coarser map upsampled to it (nearest, as torch `F.interpolate`) and added,
and a 3x3 conv + GroupNorm + ReLU; the stride-4 result goes through a 3x3 conv (with bias) to
`mask_dim` channels: `mask_features`. Convolutions before a GroupNorm have no bias. The decoder
sees the whole padded canvas (its GroupNorm statistics too), as the original. With
`enc_layers` > 0 (the original's `TransformerEncoderPixelDecoder`, not in HF) C5 is first
projected to `conv_dim` and encoded by DETR encoder layers; the stem and the transformer
decoder then read the encoded map.

Transformer decoder input: `SingleLevelNeck` on C5 (or the encoded C5): a 1x1 `input_proj` to
D and the sine position embedding, its params in this neck's scope, which is the detector's
(`input_proj/{kernel,bias}`); `input_proj=False` passes a D-channel map as it is. The original
and HF MaskFormer ignore the padding here (position embedding over the whole canvas, no key
mask: `mask_padding=False`); `mask_padding=True` uses the padding mask as DETR.

Params: `input_proj/{kernel,bias}`, `pixel_decoder/stem/{conv/kernel,norm/{scale,bias}}`,
`pixel_decoder/lateral_C{4,3,2}/{conv,norm}`, `pixel_decoder/output_C{4,3,2}/{conv,norm}`,
`pixel_decoder/mask_projection/{kernel,bias}`; with `enc_layers` also
`pixel_decoder/input_proj/{kernel,bias}` and `pixel_decoder/encoder_layers_{i}/...` (the names
of models/transformers/detr.py's encoder layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.backbones.base import Feature, resize_mask_nearest
from detr_jax.models.necks.multi_scale import ConvNorm
from detr_jax.models.necks.single_level import SingleLevelNeck
from detr_jax.models.position_encoding import sine_position_embedding
from detr_jax.models.transformers.detr import EncoderLayer

LEVELS = ("C2", "C3", "C4", "C5")
_xavier = nn.initializers.xavier_uniform()


class FPNPixelDecoder(nn.Module):
    """[C2, C3, C4, C5] maps (finest first) -> (mask features [B, h2, w2, mask_dim] at C2's
    resolution (stride 4), the encoded C5 [B, h5, w5, conv_dim] or None without `enc_layers`).

    With `enc_layers` (the original's `TransformerEncoderPixelDecoder`, MaskFormer's "+6 Enc"
    COCO panoptic models) C5 first goes through a 1x1 conv with bias (`input_proj`) to
    `conv_dim` and DETR encoder layers (`encoder_layers_{i}`, sine positions; `encoder_norm`
    with pre-norm); the stem then reads the encoded map, which also feeds the decoder.
    """

    conv_dim: int = 256
    mask_dim: int = 256
    num_groups: int = 32
    enc_layers: int = 0
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, maps: Sequence[jax.Array], c5_mask: jax.Array, train: bool = False
                 ) -> tuple[jax.Array, jax.Array | None]:
        """maps as above; c5_mask bool [B, h5, w5] (True = real: the encoder's key mask and
        positions)."""
        kw = dict(num_groups=self.num_groups, dtype=self.dtype)
        *finer, coarsest = maps
        encoded = None
        if self.enc_layers:
            d = self.conv_dim
            x = nn.Conv(d, (1, 1), kernel_init=_xavier, bias_init=nn.initializers.zeros,
                        dtype=self.dtype, name="input_proj")(coarsest)
            b, h, w, _ = x.shape
            pos = sine_position_embedding(c5_mask, d).reshape(b, h * w, d).astype(x.dtype)
            tokens, key_mask = x.reshape(b, h * w, d), c5_mask.reshape(b, h * w)
            for i in range(self.enc_layers):
                tokens = EncoderLayer(d, self.nheads, self.dim_feedforward, self.dropout,
                                      pre_norm=self.pre_norm, dtype=self.dtype,
                                      name=f"encoder_layers_{i}")(tokens, key_mask, pos, not train)
            if self.pre_norm:
                tokens = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="encoder_norm")(tokens)
            coarsest = encoded = tokens.reshape(b, h, w, d)
        y = ConvNorm(self.conv_dim, 3, name="stem", **kw)(coarsest)
        for level, x in reversed(list(zip(LEVELS[:-1], finer, strict=True))):
            lateral = ConvNorm(self.conv_dim, 1, relu=False, name=f"lateral_{level}", **kw)(x)
            up = resize_mask_nearest(y, lateral.shape[1], lateral.shape[2])  # any [B, h, w, C]
            y = ConvNorm(self.conv_dim, 3, name=f"output_{level}", **kw)(up + lateral)
        features = nn.Conv(self.mask_dim, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_xavier,
                           bias_init=nn.initializers.zeros, dtype=self.dtype,
                           name="mask_projection")(y)
        return features, encoded


class MaskFormerFPNNeck(nn.Module):
    """C2-C5 -> `mask_features` (FPN pixel decoder) + the transformer decoder's tokens (C5, or
    with `enc_layers` the pixel decoder's encoded C5).

    Attributes:
      hidden_dim: D, the transformer width (set by the builder).
      conv_dim: the FPN's channels (HF `fpn_feature_size`; 256).
      mask_dim: channels of `mask_features` (HF `mask_feature_size`; 256).
      num_groups: GroupNorm groups (32); `conv_dim` must be divisible by it.
      enc_layers: DETR encoder layers on C5 inside the pixel decoder (0: the original's
        `BasePixelDecoder`, as HF; 6: its `TransformerEncoderPixelDecoder`, COCO panoptic).
      nheads, dim_feedforward, dropout, pre_norm: those encoder layers' settings.
      input_proj: a learned 1x1 conv (`input_proj`) from the decoder's input map to D; False
        passes the map as it is (its channels must be D), as the original does when they match
        and HF when C5 has D channels.
      mask_padding: the decoder's tokens (and the encoder layers) use the padding mask, DETR
        style; False (the original MaskFormer and HF): sine positions over the whole canvas and
        no key mask.
      dtype: compute dtype (set by the builder).
    """

    hidden_dim: int = 256
    conv_dim: int = 256
    mask_dim: int = 256
    num_groups: int = 32
    enc_layers: int = 0
    nheads: int = 8
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    input_proj: bool = True
    mask_padding: bool = False
    dtype: Any = None

    @property
    def input_levels(self) -> tuple[str, ...]:
        """The backbone levels this neck reads (the builder asks the backbone for them)."""
        return LEVELS

    def __post_init__(self) -> None:
        # Checked when the model is built (start-up), not at the first trace.
        if self.num_groups <= 0 or self.conv_dim % self.num_groups:
            raise ValueError(f"model.neck.conv_dim={self.conv_dim} must be divisible by "
                             f"model.neck.num_groups={self.num_groups}")
        if self.enc_layers < 0:
            raise ValueError(f"model.neck.enc_layers={self.enc_layers} must be >= 0")
        if self.enc_layers and not self.input_proj and self.conv_dim != self.hidden_dim:
            raise ValueError(f"model.neck.input_proj=False needs model.neck.conv_dim="
                             f"{self.conv_dim} == model.hidden_dim={self.hidden_dim}")
        super().__post_init__()

    def setup(self) -> None:
        self.transformer_input = SingleLevelNeck(self.hidden_dim, "C5", "sine", dtype=self.dtype)
        nn.share_scope(self, self.transformer_input)  # `input_proj` at the detector's top level
        self.pixel_decoder = FPNPixelDecoder(
            self.conv_dim, self.mask_dim, self.num_groups, self.enc_layers, self.nheads,
            self.dim_feedforward, self.dropout, self.pre_norm, self.dtype)

    def __call__(self, feats: dict[str, Feature], train: bool = False) -> dict[str, Any]:
        """{level: Feature} -> the transformer's input as `SingleLevelNeck` gives it (`tokens`
        [B, N, D], `pos` [B, N, D], `mask` bool [B, N], `spatial_shapes` ((h5, w5),), `source`:
        the C5 Feature) plus `mask_features` [B, H/4, W/4, mask_dim] (stride 4, on the padded
        canvas; ceil(H / 4) rows for a ResNet)."""
        missing = [lv for lv in LEVELS if lv not in feats]
        if missing:
            raise ValueError(f"model.neck.name='maskformer_fpn' needs backbone levels {LEVELS}; "
                             f"missing {missing}")
        c5 = feats["C5"]
        mask = c5.mask if self.mask_padding else jnp.ones_like(c5.mask)
        mask_features, encoded = self.pixel_decoder([feats[lv].features for lv in LEVELS],
                                                    mask, train)
        x = c5.features if encoded is None else encoded
        if self.input_proj:
            out = dict(self.transformer_input({"C5": Feature(x, mask, c5.stride)}, train=train))
        else:
            b, h, w, c = x.shape
            if c != self.hidden_dim:
                raise ValueError(f"model.neck.input_proj=False: the decoder's input has {c} "
                                 f"channels, model.hidden_dim={self.hidden_dim}")
            pos = sine_position_embedding(mask, self.hidden_dim).reshape(b, h * w, c)
            out = {"tokens": x.reshape(b, h * w, c), "pos": pos.astype(x.dtype),
                   "mask": mask.reshape(b, h * w), "spatial_shapes": ((h, w),)}
        out["source"] = c5
        out["mask_features"] = mask_features
        return out
