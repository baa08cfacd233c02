"""DropPath rises linearly with depth in encoder and decoder; per-sample branch dropping.

(Label smoothing in the class loss is checked against a hand computation in test_loss.py.)
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.models.transformers.detr import DetrTransformer
from detr_jax.models.transformers.layers import DropPath, drop_path


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_drop_path_rates_rise_linearly_with_depth():
    model = DetrTransformer(hidden_dim=16, nheads=2, enc_layers=4, dec_layers=3,
                            dim_feedforward=16, dropout=0.0, drop_path=0.3)
    memory_in = {"tokens": jnp.zeros((2, 5, 16)), "pos": jnp.zeros((2, 5, 16)),
                 "mask": jnp.ones((2, 5), bool)}
    queries = {"query_pos": jnp.zeros((2, 3, 16)), "tgt": None, "self_attn_mask": None}
    rates: dict[str, float] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, DropPath) and context.method_name == "__call__":
            layer = context.module.path[-2]
            rates.setdefault(layer, context.module.rate)
        return next_fun(*args, **kwargs)

    variables = model.init(jax.random.PRNGKey(0), memory_in, queries)
    with nn.intercept_methods(record):
        model.apply(variables, memory_in, queries, train=True,
                    rngs={"dropout": jax.random.PRNGKey(1), "droppath": jax.random.PRNGKey(2)})
    enc = [rates[f"encoder_layers_{i}"] for i in range(4)]
    dec = [rates[f"decoder_layers_{i}"] for i in range(3)]
    np.testing.assert_allclose(enc, [0.0, 0.1, 0.2, 0.3], atol=1e-7)
    np.testing.assert_allclose(dec, [0.0, 0.15, 0.3], atol=1e-7)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    x = jnp.ones((4000, 3, 2))
    y = np.asarray(drop_path(x, 0.25, False, jax.random.PRNGKey(0)))
    per_sample = y.reshape(4000, -1)
    assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))
    assert abs(per_sample.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(drop_path(x, 0.25, True, None), x)  # eval: identity


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_drop_path_module_needs_rng_only_when_active(rate):
    x = jnp.ones((8, 4))
    out = DropPath(rate).apply({}, x, False, rngs={"droppath": jax.random.PRNGKey(0)})
    assert out.shape == x.shape
