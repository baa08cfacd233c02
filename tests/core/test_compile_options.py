"""step_compiler_options: YNNPACK fusions off on CPU, the same numbers as XLA's default."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from detr_jax.config_validation import ConfigError, validate_config
from detr_jax.core.compile_options import step_compiler_options


def test_options_switch_ynnpack_off_on_cpu_only_unless_asked():
    assert jax.default_backend() == "cpu"
    assert step_compiler_options() == {"xla_cpu_experimental_ynn_fusion_type": ""}
    assert step_compiler_options(xla_cpu_ynnpack=True) is None


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (7, 2)])
def test_eigen_convolutions_match_ynnpack_and_use_no_ynnpack_fusion(k, stride):
    """Forward, input and kernel gradients of a ResNet-sized convolution agree (float32
    summation order only) between XLA:CPU's default (YNNPACK) and the steps' options (Eigen)."""
    rng = np.random.default_rng(k + stride)
    x = jnp.asarray(rng.normal(size=(4, 32, 32, 64)), jnp.float32)
    w = jnp.asarray(0.05 * rng.normal(size=(k, k, 64, 64)), jnp.float32)

    def f(x_, w_):
        y = jax.lax.conv_general_dilated(
            x_, w_, (stride, stride), ((k // 2, k // 2),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jnp.sum(jnp.sin(y))

    results = {}
    for name, options in (("default", None), ("steps", step_compiler_options())):
        fn = jax.jit(jax.value_and_grad(f, argnums=(0, 1)), compiler_options=options)
        compiled = fn.lower(x, w).compile()
        if name == "steps":
            assert "__ynn_fusion" not in compiled.as_text()
        results[name] = compiled(x, w)
    (v0, (dx0, dw0)), (v1, (dx1, dw1)) = results["default"], results["steps"]
    np.testing.assert_allclose(v1, v0, rtol=1e-4)
    for a, b in ((dx1, dx0), (dw1, dw0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_config_field_is_validated():
    config = tiny_config()
    assert config.xla_cpu_ynnpack is False
    config.xla_cpu_ynnpack = True
    validate_config(config, num_devices=1)
    bad = tiny_config()
    with bad.ignore_type():
        bad.xla_cpu_ynnpack = "yes"
    with pytest.raises(ConfigError, match="xla_cpu_ynnpack"):
        validate_config(bad, num_devices=1)
