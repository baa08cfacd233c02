"""Random model variables without compiling the model's init (30 s+ on a loaded CPU)."""

from __future__ import annotations

import flax
import jax.numpy as jnp
import numpy as np

from detr_jax.models import build_model, variable_shapes


def random_variables(config, seed: int = 0) -> dict:
    """Variables shaped as `init_variables(build_model(config), ...)`, filled from a numpy RNG.

    Kernels: N(0, 1 / fan_in); scales, weights and variances of norms: U(0.8, 1.2); biases and
    means: N(0, 0.05). Good enough for plumbing tests (not for training).
    """
    model = build_model(config)
    shapes = variable_shapes(model, tuple(config.image_buckets[0]))
    rng = np.random.default_rng(seed)
    out = {}
    for coll, tree in shapes.items():
        flat = {}
        for key, s in flax.traverse_util.flatten_dict(tree, sep="/").items():
            leaf = key.rsplit("/", 1)[-1]
            if len(s.shape) >= 2:
                v = rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))
            elif leaf in ("scale", "weight", "var", "running_var"):
                v = rng.uniform(0.8, 1.2, s.shape)
            else:
                v = rng.normal(size=s.shape) * 0.05
            flat[key] = jnp.asarray(v, s.dtype)
        out[coll] = flax.traverse_util.unflatten_dict(flat, sep="/")
    return out
