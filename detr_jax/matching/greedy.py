"""Greedy baseline matcher inside ``jit``: repeatedly take the cheapest remaining pair.

Per image, ``n`` times: pick the globally cheapest (query, slot) pair among free queries
and unassigned valid slots, and assign it. Always a valid one-to-one assignment; no
optimality guarantee (the total can be far from optimal: it is the baseline against
which the other matchers' gaps are read). Cost ``O(B * Q * G)`` per step, ``G``
sequential steps (``lax.fori_loop``), i.e. ``O(B Q G^2)``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from detr_jax.matching._common import InJitMatcher


def greedy_solve(cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
    """Greedy assignment: [B, Q, G] finite costs, [B, G] valid -> [B, G] int32 (-1 invalid)."""
    batch, num_q, num_g = cost.shape
    b_idx = jnp.arange(batch, dtype=jnp.int32)

    def body(_, carry):
        match, q_free = carry
        open_g = gt_valid & (match < 0)
        allowed = q_free[:, :, None] & open_g[:, None, :]
        flat = jnp.where(allowed, cost, jnp.inf).reshape(batch, -1)
        pick = jnp.argmin(flat, axis=1).astype(jnp.int32)
        ok = jnp.any(allowed, axis=(1, 2))
        q, g = pick // num_g, pick % num_g
        match = match.at[b_idx, g].set(jnp.where(ok, q, match[b_idx, g]))
        q_free = q_free.at[b_idx, q].set(q_free[b_idx, q] & ~ok)
        return match, q_free

    init = (jnp.full((batch, num_g), -1, jnp.int32), jnp.ones((batch, num_q), bool))
    return lax.fori_loop(0, num_g, body, init)[0]


class GreedyMatcher(InJitMatcher):
    """Greedy baseline: ``(cost [B,Q,G] f32, gt_valid [B,G] bool) -> [B,G] int32``.

    Valid assignment always; no optimality bound. Settings: none.
    """

    def solve(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        return greedy_solve(cost, gt_valid)
