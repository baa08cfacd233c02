"""ResNet-18/34/50/101 backbone returning named feature levels.

Its parameter-group rules are `ResNet.param_rules` and its PyTorch key maps (torchvision and HF
layouts) are in resnet_keys.py beside this file.

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

from detr_jax.models.backbones.base import Feature, resize_mask_nearest
from detr_jax.models.conv import WEIGHT_GRAD_CHOICES, Conv2d
from detr_jax.models.norms import NORM_CHOICES, FrozenBatchNorm, make_norm

# depth -> (block kind, blocks per stage)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
BACKBONE_CHOICES = tuple(f"resnet{d}" for d in RESNET_SPECS)

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's kaiming


def conv_norm(
    x: jax.Array,
    mask: jax.Array | None,
    *,
    features: int,
    k: int,
    conv_name: str,
    norm_name: str,
    norm: str,
    stride: int = 1,
    dilation: int = 1,
    train: bool = False,
    zero_init: bool = False,
    dtype: Any = None,
    weight_grad: str = "xla",
    fold_bn: bool = False,
) -> jax.Array:
    """conv (`conv_name/kernel`) then norm (`norm_name/...`), inside the caller's compact scope.

    x [B,H,W,Cin] -> [B,Ho,Wo,features]; mask [B,Ho,Wo,1] for the masked norms. With `fold_bn`
    and a FrozenBatchNorm the affine map is folded into the convolution (same parameters).
    """
    conv = Conv2d(
        features, k, stride, dilation, kernel_init=_conv_init, dtype=dtype,
        weight_grad=weight_grad, name=conv_name,
    )
    if fold_bn and norm == "frozen_bn":
        scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
        scale, shift = FrozenBatchNorm(scale_init=scale_init, name=norm_name).affine(features)
        return conv(x, scale, shift)
    norm_fn = make_norm(
        norm, name=norm_name, train=train, zero_init=zero_init, channels=features, dtype=dtype
    )
    return norm_fn(conv(x), mask)


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
    conv_weight_grad: str = "xla"
    fold_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask_in: jax.Array, mask_out: jax.Array) -> jax.Array:
        def cn(y, i, c, k, mask, stride=1, dilation=1, zero=False, conv=None, bn=None):
            return conv_norm(
                y, mask, features=c, k=k, conv_name=conv or f"conv{i}", norm_name=bn or f"bn{i}",
                norm=self.norm, stride=stride, dilation=dilation, train=self.train,
                zero_init=zero, dtype=self.dtype, weight_grad=self.conv_weight_grad,
                fold_bn=self.fold_bn,
            )

        def apply_mask(y, m):
            return y * m.astype(y.dtype) if self.mask_features else y

        zero, s, d = self.zero_init_residual, self.stride, self.dilation
        if self.kind == "basic":
            out_c = self.planes
            y = apply_mask(nn.relu(cn(x, 1, self.planes, 3, mask_out, s, d)), mask_out)
            y = cn(y, 2, self.planes, 3, mask_out, 1, d, zero)
        else:
            out_c = self.planes * 4
            y = apply_mask(nn.relu(cn(x, 1, self.planes, 1, mask_in)), mask_in)
            y = apply_mask(nn.relu(cn(y, 2, self.planes, 3, mask_out, s, d)), mask_out)
            y = cn(y, 3, out_c, 1, mask_out, zero=zero)
        identity = x
        if self.downsample:
            identity = cn(x, 0, out_c, 1, mask_out, s, conv="downsample_0", bn="downsample_1")
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
      mask_features: zero activations outside the real pixels (padding invariance), and return
        the strided pixel mask with each level; without it the level's mask is the pixel mask
        resized (nearest), as the original and HF do (the same mask whenever the canvas is a
        multiple of the stride).
      return_levels: which of "C2".."C5" (stride 4, 8, 16, 32, halved for the dilated level)
        to return. Stages deeper than the deepest level asked for are not built.
      remat: rematerialise each residual block in the backward pass (`nn.remat`); the same
        parameters and results, less activation memory.
      conv_weight_grad: "xla" or "gemm" (residual blocks' kernel gradients as GEMMs; see
        detr_jax/models/conv.py for when that helps).
      fold_bn: fold FrozenBatchNorm into the preceding convolution (same parameters).
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
    conv_weight_grad: str = "xla"
    fold_bn: bool = False

    def __post_init__(self) -> None:
        # Checked when the model is built (start-up), not at the first trace.
        choices = (("norm", self.norm, NORM_CHOICES),
                   ("conv_weight_grad", self.conv_weight_grad, WEIGHT_GRAD_CHOICES))
        for field, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"model.backbone.{field}={value!r}; choose one of {allowed}")
        super().__post_init__()

    def param_rules(self) -> list[tuple[str, str]]:
        """Parameter-group rules this backbone implies, as (regex on paths inside the backbone,
        "frozen"): its FrozenBatchNorm arrays, and the stages `frozen_stages` freezes (the
        optimiser gives them exactly zero updates; see detr_jax/optim.py)."""
        rules = []
        if self.norm == "frozen_bn":
            rules.append((r"^(.*/)?(bn\d+|downsample_1)/", "frozen"))
        stages = ("conv1", "bn1", r"layer1_\d+", r"layer2_\d+", r"layer3_\d+", r"layer4_\d+")
        n = {0: 0, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6}[int(self.frozen_stages)]
        if n:
            rules.append((f"^({'|'.join(stages[:n])})/", "frozen"))
        return rules

    @nn.compact
    def __call__(
        self, images: jax.Array, pixel_mask: jax.Array, train: bool = False
    ) -> dict[str, Feature]:
        """images [B, H, W, 3] normalised, pixel_mask [B, H, W] bool (True = real) ->
        {level: Feature(features [B, h, w, C], mask [B, h, w], stride)} for `return_levels`."""
        if self.depth not in RESNET_SPECS:
            raise ValueError(f"ResNet depth={self.depth}; choose one of {tuple(RESNET_SPECS)}")
        if self.norm not in NORM_CHOICES:
            raise ValueError(f"model.backbone.norm={self.norm!r}; choose one of {NORM_CHOICES}")
        kind, blocks = RESNET_SPECS[self.depth]
        m = pixel_mask[..., None]

        def apply_mask(y, mm):
            return y * mm.astype(y.dtype) if self.mask_features else y

        def maybe_freeze(y, stage):
            return jax.lax.stop_gradient(y) if self.frozen_stages >= stage else y

        m2 = m[:, ::2, ::2]
        # The stem keeps XLA's kernel gradient: 49 taps of 3 input channels make poor GEMMs.
        x = conv_norm(
            images, m2, features=self.width, k=7, conv_name="conv1", norm_name="bn1",
            norm=self.norm, stride=2, train=train, dtype=self.dtype, fold_bn=self.fold_bn,
        )
        x = apply_mask(nn.relu(x), m2)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        cur_mask = m2[:, ::2, ::2]
        x = maybe_freeze(apply_mask(x, cur_mask), 1)

        unknown = set(self.return_levels) - set(LEVELS)
        if unknown or not self.return_levels:
            raise ValueError(f"return_levels={self.return_levels}; choose from {LEVELS}")
        last_stage = max(LEVELS.index(level) for level in self.return_levels)
        out: dict[str, Feature] = {}
        in_c, stride_px = self.width, 4
        block_cls = nn.remat(ResidualBlock) if self.remat else ResidualBlock
        for stage, n_blocks in enumerate(blocks[: last_stage + 1]):
            planes = self.width * (2**stage)
            stride = 1 if stage == 0 else 2
            dilation = 1
            if stage == last_stage and stage > 0 and self.dilation:
                stride, dilation = 1, 2
            out_c = planes * (4 if kind == "bottleneck" else 1)
            stride_px *= stride
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
                    conv_weight_grad=self.conv_weight_grad,
                    fold_bn=self.fold_bn,
                    name=f"layer{stage + 1}_{b}",
                )(x, cur_mask, mask_out)
                cur_mask = mask_out
                in_c = out_c
            x = maybe_freeze(x, stage + 2)
            level = f"C{stage + 2}"
            if level in self.return_levels:
                mask = cur_mask[..., 0]
                if not self.mask_features:
                    mask = resize_mask_nearest(pixel_mask, x.shape[1], x.shape[2])
                out[level] = Feature(x, mask, stride_px)
        return out
