"""ResNet-18/34/50/101 backbone returning named feature levels.

Parameter names mirror torchvision (`conv1`, `bn1`, `layer1_0/conv1`, `layer1_0/downsample_0`, ...),
so that the PyTorch DETR key `backbone.0.body.layer1.0.conv1.weight` maps to
`backbone/layer1_0/conv1/kernel` (OIHW -> HWIO) one to one.

Padding: every image sits at the top-left of its padded canvas. Convolutions use PyTorch's symmetric
explicit padding (never "SAME", whose split depends on the input size), and with
`mask_features=True` every activation that feeds a spatial convolution is zeroed outside the real
pixels, so a real pixel's features never depend on how much padding the batch added. The mask at
stride s is `pixel_mask[:, ::s, ::s]`, which is exactly the set of positions that the unpadded image
produces (each stride-2 layer maps n valid positions to ceil(n / 2)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from detr_jax.models.norms import NORM_CHOICES, make_norm

# depth -> (block kind, blocks per stage)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
BACKBONE_CHOICES = tuple(f"resnet{d}" for d in RESNET_SPECS)

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's kaiming


def _conv(features: int, k: int, stride: int = 1, dilation: int = 1, name: str = "", dtype=None):
    pad = dilation * (k // 2)
    return nn.Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        kernel_init=_conv_init,
        dtype=dtype,
        name=name,
    )


class ResidualBlock(nn.Module):
    """A torchvision BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1; x4).

    Inputs: x [B, H, W, Cin]; mask_in [B, H, W, 1] and mask_out [B, H/s, W/s, 1] (True = real).
    """

    planes: int
    kind: str
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    norm: str = "frozen_bn"
    train: bool = False
    zero_init_residual: bool = False
    mask_features: bool = True
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, mask_in: jax.Array, mask_out: jax.Array) -> jax.Array:
        def norm(name, c, zero=False):
            return make_norm(
                self.norm, name=name, train=self.train, zero_init=zero, channels=c,
                dtype=self.dtype,
            )

        def apply_mask(y, m):
            return y * m.astype(y.dtype) if self.mask_features else y

        zero = self.zero_init_residual
        if self.kind == "basic":
            out_c = self.planes
            y = _conv(self.planes, 3, self.stride, self.dilation, "conv1", self.dtype)(x)
            y = apply_mask(nn.relu(norm("bn1", self.planes)(y, mask_out)), mask_out)
            y = _conv(self.planes, 3, 1, self.dilation, "conv2", self.dtype)(y)
            y = norm("bn2", self.planes, zero)(y, mask_out)
        else:
            out_c = self.planes * 4
            y = _conv(self.planes, 1, name="conv1", dtype=self.dtype)(x)
            y = apply_mask(nn.relu(norm("bn1", self.planes)(y, mask_in)), mask_in)
            y = _conv(self.planes, 3, self.stride, self.dilation, "conv2", self.dtype)(y)
            y = apply_mask(nn.relu(norm("bn2", self.planes)(y, mask_out)), mask_out)
            y = _conv(out_c, 1, name="conv3", dtype=self.dtype)(y)
            y = norm("bn3", out_c, zero)(y, mask_out)
        identity = x
        if self.downsample:
            identity = nn.Conv(
                out_c,
                (1, 1),
                strides=(self.stride, self.stride),
                padding="VALID",
                use_bias=False,
                kernel_init=_conv_init,
                dtype=self.dtype,
                name="downsample_0",
            )(x)
            identity = norm("downsample_1", out_c)(identity, mask_out)
        return apply_mask(nn.relu(y + identity), mask_out)


LEVELS = ("C2", "C3", "C4", "C5")


class ResNet(nn.Module):
    """ResNet backbone.

    Attributes:
      depth: 18, 34, 50 or 101.
      width: channels of the stem (64 in torchvision); stage widths are width x (1, 2, 4, 8).
      norm: "frozen_bn" (pretrained weights), "bn" or "gn" (trainable, from scratch).
      dilation: the last computed stage keeps the previous stride and dilates its 3x3
        convolutions by 2: DC5 (C5 at stride 16) by default, or C4 at stride 8 when C4 is the
        deepest level asked for.
      frozen_stages: 0 none, 1 the stem, 2 stem + layer1 (the original with pretrained weights),
        ..., 5 all. Gradients are stopped after the last frozen stage (and the optimiser gives the
        frozen parameters exactly zero updates).
      zero_init_residual: the last norm of each residual branch starts at zero (from scratch).
      mask_features: zero activations outside the real pixels (padding invariance).
      return_levels: which of "C2".."C5" (stride 4, 8, 16, 32, halved for the dilated level)
        to return. Stages deeper than the deepest level asked for are not built.
      remat: rematerialise each residual block in the backward pass (`nn.remat`); the same
        parameters and results, less activation memory.
    """

    depth: int = 50
    width: int = 64
    norm: str = "frozen_bn"
    dilation: bool = False
    frozen_stages: int = 0
    zero_init_residual: bool = False
    mask_features: bool = True
    return_levels: Sequence[str] = ("C5",)
    dtype: Any = None
    remat: bool = False

    @nn.compact
    def __call__(
        self, images: jax.Array, pixel_mask: jax.Array, train: bool = False
    ) -> dict[str, tuple[jax.Array, jax.Array]]:
        """images [B, H, W, 3], pixel_mask [B, H, W] bool -> {level: (features, mask [B,h,w])}."""
        if self.depth not in RESNET_SPECS:
            raise ValueError(f"model.backbone=resnet{self.depth}; choose one of {BACKBONE_CHOICES}")
        if self.norm not in NORM_CHOICES:
            raise ValueError(f"model.backbone_norm={self.norm!r}; choose one of {NORM_CHOICES}")
        kind, blocks = RESNET_SPECS[self.depth]
        m = pixel_mask[..., None]

        def apply_mask(y, mm):
            return y * mm.astype(y.dtype) if self.mask_features else y

        def maybe_freeze(y, stage):
            return jax.lax.stop_gradient(y) if self.frozen_stages >= stage else y

        x = _conv(self.width, 7, 2, name="conv1", dtype=self.dtype)(images.astype(self.dtype))
        m2 = m[:, ::2, ::2]
        bn1 = make_norm(self.norm, name="bn1", train=train, channels=self.width, dtype=self.dtype)
        x = apply_mask(nn.relu(bn1(x, m2)), m2)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        cur_mask = m2[:, ::2, ::2]
        x = maybe_freeze(apply_mask(x, cur_mask), 1)

        unknown = set(self.return_levels) - set(LEVELS)
        if unknown or not self.return_levels:
            raise ValueError(f"return_levels={self.return_levels}; choose from {LEVELS}")
        last_stage = max(LEVELS.index(level) for level in self.return_levels)
        out: dict[str, tuple[jax.Array, jax.Array]] = {}
        in_c = self.width
        block_cls = nn.remat(ResidualBlock) if self.remat else ResidualBlock
        for stage, n_blocks in enumerate(blocks[: last_stage + 1]):
            planes = self.width * (2**stage)
            stride = 1 if stage == 0 else 2
            dilation = 1
            if stage == last_stage and stage > 0 and self.dilation:
                stride, dilation = 1, 2
            out_c = planes * (4 if kind == "bottleneck" else 1)
            for b in range(n_blocks):
                s = stride if b == 0 else 1
                mask_out = cur_mask[:, ::s, ::s] if s > 1 else cur_mask
                x = block_cls(
                    planes=planes,
                    kind=kind,
                    stride=s,
                    # torchvision: the first block of a dilated stage keeps the previous dilation.
                    dilation=1 if b == 0 else dilation,
                    downsample=(b == 0 and (s != 1 or in_c != out_c)),
                    norm=self.norm,
                    train=train,
                    zero_init_residual=self.zero_init_residual,
                    mask_features=self.mask_features,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{b}",
                )(x, cur_mask, mask_out)
                cur_mask = mask_out
                in_c = out_c
            x = maybe_freeze(x, stage + 2)
            level = f"C{stage + 2}"
            if level in self.return_levels:
                out[level] = (x, cur_mask[..., 0])
        return out
