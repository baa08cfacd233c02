"""PyTorch's default initialisers for nn.Linear / nn.Conv, and Dense layers that use them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch nn.Linear/Conv default kernel init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch nn.Linear/Conv default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, name: str, dtype: Any = None) -> nn.Dense:
    """nn.Dense initialised as torch.nn.Linear(fan_in, features)."""
    return nn.Dense(
        features,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(fan_in),
        dtype=dtype,
        name=name,
    )


class MLP(nn.Module):
    """num_layers Dense layers with ReLU between them (DETR's box head: 3 layers).

    Params `layers_{i}/{kernel,bias}`; x [..., input_dim] -> [..., output_dim].
    """

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
            x = torch_dense(
                self.output_dim if last else self.hidden_dim, fan_in, f"layers_{i}", self.dtype
            )(x)
            fan_in = self.hidden_dim
            if not last:
                x = nn.relu(x)
        return x
