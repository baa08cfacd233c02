"""Exponential moving average (EMA) of the params, kept inside the jitted train step.

`optim.ema_decay` = 0 (the default) turns it off: the train state's `ema_params` is None and
nothing else changes. With a decay d in (0, 1) (e.g. 0.9997, as RT-DETR / RF-DETR), after each
update the train step sets

    ema <- decay_n * ema + (1 - decay_n) * params        (`optax.incremental_update`)

where n = the number of updates made before this one (`state.step`, 0 for the first) and, with
`optim.ema_warmup` (default True),

    decay_n = min(d, (1 + n) / (10 + n))

the warm-up of TensorFlow's `tf.train.ExponentialMovingAverage(decay, num_updates=n)` (its
documented formula), also used by the "warmup" EMAs of several detection codebases; without
warm-up decay_n = d. Note that RT-DETR's and YOLOv5's ModelEMA ramp differently,
d * (1 - exp(-n / 2000)); this module uses the TensorFlow formula above. The EMA starts equal
to the initial (or `init_from`) params. Frozen params (optimiser label "frozen") are copied, not
averaged, so they stay bitwise equal to the params. BatchNorm statistics (`batch_stats`) are not
averaged: evaluation with the EMA params uses the model's own statistics. A skipped
(non-finite) step keeps the EMA as it was.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def ema_decay(config: Any) -> float:
    """`config.optim.ema_decay` (0.0 when the field is absent: configs older than the EMA)."""
    return float(config.optim.get("ema_decay", 0.0) or 0.0)


def ema_on(config: Any) -> bool:
    return ema_decay(config) > 0.0


def ema_warmup(config: Any) -> bool:
    return bool(config.optim.get("ema_warmup", True))


def decay_at(step: Any, decay: float, warmup: bool = True) -> jax.Array:
    """The decay of the update made after `step` earlier updates (see the module docstring)."""
    d = jnp.asarray(decay, jnp.float32)
    if not warmup:
        return d
    n = jnp.asarray(step, jnp.float32)
    return jnp.minimum(d, (1.0 + n) / (10.0 + n))


def update(ema: Any, params: Any, decay: jax.Array, frozen: Any = None) -> Any:
    """decay * ema + (1 - decay) * params per leaf; leaves where `frozen` (a bool pytree like
    `params`, or None) is True take `params` as they are."""
    new = optax.incremental_update(params, ema, step_size=1.0 - decay)
    if frozen is None:
        return new
    return jax.tree.map(lambda n, p, f: p if f else n, new, params, frozen)


def copy_params(params: Any) -> Any:
    """A copy of `params` in new buffers (the train step donates the state: the EMA must not
    share a buffer with the params)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), params)


def problems(config: Any) -> list[str]:
    """Start-up problems of the EMA fields (one line each)."""
    out = []
    d = config.optim.get("ema_decay", 0.0)
    if isinstance(d, bool) or not isinstance(d, int | float) or not 0.0 <= d < 1.0:
        out.append(f"optim.ema_decay={d!r} must be a number in [0, 1) (0 = no EMA; e.g. 0.9997)")
    w = config.optim.get("ema_warmup", True)
    if not isinstance(w, bool):
        out.append(f"optim.ema_warmup={w!r} must be true or false")
    return out
