"""The backbone's 2-D convolution: optional GEMM weight gradient and folded frozen BatchNorm.

`Conv2d` holds one `kernel` [k, k, Cin, Cout] (HWIO, flax's layout, so checkpoints and converters
see the same tree as `nn.Conv(use_bias=False)`) and computes NHWC -> NHWC with PyTorch-style
symmetric padding `dilation * (k // 2)`.

`weight_grad="gemm"` gives the convolution a custom VJP whose kernel gradient is k*k matrix
products, one per kernel tap: dW[i, j] = X_ij^T G with X_ij the [B*Ho*Wo, Cin] input window
of that tap (taken from the input transposed once to [Cin, B, H, W]) and G the [B*Ho*Wo, Cout]
output gradient (a 1x1 kernel: one GEMM straight from NHWC, no transpose). XLA computes the
kernel gradient as a convolution whose "kernel" is the whole output-gradient map; XLA:CPU's
YNNPACK fusions (`xla_cpu_ynnpack=true`) run that at a fraction of the forward's speed, and
there the GEMMs helped (R50 0.54x -> 0.73x of PyTorch). With the steps'
default Eigen convolutions XLA's own kernel gradient is as fast or faster (docs/benchmarks.md),
so "xla" is the default everywhere; the input gradient is always XLA's own.

`scale`/`shift` fold a per-output-channel affine map (a FrozenBatchNorm) into the convolution:
conv(x, W * scale) + shift == conv(x, W) * scale + shift, one elementwise pass fewer.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

WEIGHT_GRAD_CHOICES = ("xla", "gemm")
_DN = ("NHWC", "HWIO", "NHWC")


def conv_xla(
    x: jax.Array, w: jax.Array, stride: int, pad: int, dilation: int
) -> jax.Array:
    """x [B,H,W,Cin], w [k,k,Cin,Cout] -> [B,Ho,Wo,Cout]: XLA's convolution, symmetric `pad`."""
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
        dimension_numbers=_DN,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_gemm_wgrad(x: jax.Array, w: jax.Array, stride: int, pad: int, dilation: int):
    """x [B,H,W,Cin], w [k,k,Cin,Cout] -> [B,Ho,Wo,Cout]; the kernel gradient is k*k GEMMs."""
    return conv_xla(x, w, stride, pad, dilation)


def _fwd(x, w, stride, pad, dilation):
    return conv_xla(x, w, stride, pad, dilation), (x, w)


def _bwd(stride, pad, dilation, res, g):
    x, w = res
    _, vjp_x = jax.vjp(lambda x_: conv_xla(x_, w, stride, pad, dilation), x)
    (dx,) = vjp_x(g)
    k, cin, cout = w.shape[0], w.shape[2], w.shape[3]
    ho, wo = g.shape[1:3]
    if k == 1 and pad == 0:
        # A 1x1 kernel has one tap: dW = X^T G straight from NHWC, contracting the leading
        # (batch * spatial) dimension of both, with no transpose of the activation.
        xs = x[:, ::stride, ::stride, :] if stride > 1 else x
        dw = lax.dot_general(
            xs.reshape(-1, cin), g.reshape(-1, cout), (((0,), (0,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        return dx, dw.reshape(w.shape).astype(w.dtype)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else x
    # One transpose of the input to [Cin, B, Hp, Wp]: every tap's window is then a row-major
    # [Cin, B*Ho*Wo] operand (no per-tap transpose), and the GEMM gives [Cin, Cout] in HWIO order.
    xt = jnp.transpose(xp, (3, 0, 1, 2))
    gf = g.reshape(-1, cout)
    taps = []
    for i in range(k):
        for j in range(k):
            window = xt[
                :,
                :,
                i * dilation : i * dilation + stride * (ho - 1) + 1 : stride,
                j * dilation : j * dilation + stride * (wo - 1) + 1 : stride,
            ]
            taps.append(
                jnp.dot(window.reshape(cin, -1), gf, preferred_element_type=jnp.float32)
            )
    dw = jnp.stack(taps).reshape(w.shape)
    return dx, dw.astype(w.dtype)


conv_gemm_wgrad.defvjp(_fwd, _bwd)


class Conv2d(nn.Module):
    """Bias-free k x k convolution with PyTorch padding; see the module docstring."""

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Any = None
    weight_grad: str = "xla"

    @nn.compact
    def __call__(
        self, x: jax.Array, scale: jax.Array | None = None, shift: jax.Array | None = None
    ) -> jax.Array:
        """x [B,H,W,Cin]; optional scale/shift [Cout] (folded affine) -> [B,Ho,Wo,Cout]."""
        if self.weight_grad not in WEIGHT_GRAD_CHOICES:
            raise ValueError(
                f"model.backbone.conv_weight_grad={self.weight_grad!r}; choose one of "
                f"{WEIGHT_GRAD_CHOICES}"
            )
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        dtype = self.dtype or x.dtype
        if scale is not None:
            kernel = kernel * scale
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        pad = self.dilation * (k // 2)
        if self.weight_grad == "gemm":
            y = conv_gemm_wgrad(x, kernel, self.stride, pad, self.dilation)
        else:
            y = conv_xla(x, kernel, self.stride, pad, self.dilation)
        return y if shift is None else y + shift.astype(dtype)
