"""Normalisation layers for the backbone, all aware of the padding mask.

Each layer takes `x` float [B, H, W, C] (NHWC) and `mask` bool [B, H, W, 1] (True on real pixels).

- `FrozenBatchNorm`: BatchNorm with fixed statistics and affine (for pretrained weights). Its four
  arrays live in `params` under the PyTorch names (`weight`, `bias`, `running_mean`, `running_var`)
  so that checkpoints map one to one; they sit behind `stop_gradient` and the optimiser labels them
  frozen, so they never change.
- `batch`: flax BatchNorm whose statistics are computed over real pixels only (trainable, for a
  backbone trained from scratch). Under jit with a sharded batch the statistics are global.
- `group`: GroupNorm over real pixels only, so padding never changes a real pixel's output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_CHOICES = ("frozen_bn", "bn", "gn")


class FrozenBatchNorm(nn.Module):
    """BatchNorm2d with frozen statistics and affine parameters (eps 1e-5, as in DETR)."""

    epsilon: float = 1e-5
    scale_init: nn.initializers.Initializer = nn.initializers.ones

    @nn.compact
    def affine(self, channels: int) -> tuple[jax.Array, jax.Array]:
        """(scale, shift) float32 [channels]: the map is x * scale + shift (no gradient)."""
        c = channels
        weight = jax.lax.stop_gradient(self.param("weight", self.scale_init, (c,)))
        bias = jax.lax.stop_gradient(self.param("bias", nn.initializers.zeros, (c,)))
        mean = jax.lax.stop_gradient(self.param("running_mean", nn.initializers.zeros, (c,)))
        var = jax.lax.stop_gradient(self.param("running_var", nn.initializers.ones, (c,)))
        scale = weight * jax.lax.rsqrt(var + self.epsilon)
        return scale, bias - mean * scale

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        del mask  # Per-channel affine map: padding does not leak into real pixels.
        scale, shift = self.affine(x.shape[-1])
        return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def make_norm(
    kind: str,
    *,
    name: str,
    train: bool = False,
    zero_init: bool = False,
    num_groups: int = 32,
    channels: int | None = None,
    momentum: float = 0.9,
    dtype: Any = None,
) -> Callable[[jax.Array, jax.Array | None], jax.Array]:
    """Builds the configured normalisation as a submodule named `name` (call inside compact).

    Args:
      kind: one of `NORM_CHOICES`.
      name: the submodule name (mirrors the PyTorch attribute, e.g. "bn1", "downsample_1").
      train: batch statistics are used and updated (kind "bn" only).
      zero_init: start the scale at zero (the last norm of a residual branch, so that every
        residual block starts as the identity when training from scratch).
      num_groups: groups for "gn" (reduced to a divisor of `channels`).
      channels: channel count, needed for "gn".
      dtype: computation (output) dtype of "bn" / "gn", e.g. bfloat16 (None: the input's).
        Parameters stay float32 and the statistics are computed in float32 either way;
        "frozen_bn" always returns the input's dtype.

    Returns:
      f(x [B,H,W,C], mask [B,H,W,1] bool or None) -> [B,H,W,C].
    """
    scale_init = nn.initializers.zeros if zero_init else nn.initializers.ones
    if kind == "frozen_bn":
        frozen = FrozenBatchNorm(scale_init=scale_init, name=name)
        return lambda x, mask: frozen(x)
    if kind == "bn":
        bn = nn.BatchNorm(
            use_running_average=not train,
            momentum=momentum,
            epsilon=1e-5,
            scale_init=scale_init,
            dtype=dtype,
            name=name,
        )
        return lambda x, mask: bn(x, mask=mask)
    if kind == "gn":
        if channels is None:
            raise ValueError("make_norm('gn') needs `channels`")
        gn = nn.GroupNorm(
            num_groups=_largest_divisor_at_most(channels, num_groups),
            epsilon=1e-5,
            scale_init=scale_init,
            dtype=dtype,
            name=name,
        )
        return lambda x, mask: gn(x, mask=None if mask is None else jnp.broadcast_to(mask, x.shape))
    raise ValueError(f"model.backbone.norm={kind!r}; choose one of {NORM_CHOICES}")


def _largest_divisor_at_most(n: int, k: int) -> int:
    for g in range(min(n, k), 0, -1):
        if n % g == 0:
            return g
    return 1
