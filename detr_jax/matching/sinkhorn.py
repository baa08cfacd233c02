"""Entropic optimal transport (log-domain Sinkhorn, eps annealing), rounded by an auction.

Transport problem per image: every query carries mass 1; every valid slot demands 1 and
a "no object" sink column (cost 0) absorbs the ``Q - n`` surplus queries; invalid slots
have zero mass (masked out of every log-sum-exp). Costs are normalised to ``[0, 1]``
over the valid entries. A fixed budget of ``num_iters`` log-domain Sinkhorn iterations
runs with eps decaying geometrically from ``eps_start`` to ``eps_end`` (then held), so
the cost is ``O(num_iters * B * Q * G)`` and fully static.

Rounding. The coupling is fractional, so it is rounded to a one-to-one matching by ONE
phase of the auction of :mod:`detr_jax.matching.auction` (int32 prices, sink for the
surplus queries), warm-started with the Sinkhorn query potentials as prices
``p_q = -f_q``, at ``eps = round_eps`` (relative to the cost span). The auction's
eps-CS certificate gives the guarantee: the matching is valid, and when the rounding
finishes within ``round_max_rounds`` its total cost is within ``Q * round_eps * span``
(plus the auction's quantisation, about ``1e-6 * span``) of the optimum, whatever the
quality of the Sinkhorn solution; if the round budget runs out a greedy completion keeps
it valid (no bound then).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from detr_jax.matching._common import InJitMatcher
from detr_jax.matching.auction import auction_int, to_int_costs
from detr_jax.matching.base import int_setting, positive_setting


def sinkhorn_potentials(
    cost: jnp.ndarray,
    gt_valid: jnp.ndarray,
    num_iters: int = 60,
    eps_start: float = 0.5,
    eps_end: float = 2e-3,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Log-domain Sinkhorn with a sink column.

    Args:
      cost: [B, Q, G] finite costs, already normalised to about ``[0, 1]``.
      gt_valid: [B, G] bool.
      num_iters, eps_start, eps_end: iteration budget and eps schedule (geometric over
        the first 3/4 of the iterations, then constant).

    Returns:
      ``(f [B, Q], g [B, G + 1])`` dual potentials (``g[:, G]`` is the sink's).
    """
    batch, num_q, num_g = cost.shape
    n = jnp.sum(gt_valid, axis=1).astype(jnp.float32)
    full = jnp.concatenate([cost, jnp.zeros((batch, num_q, 1), cost.dtype)], axis=2)
    col_mass = jnp.concatenate([gt_valid.astype(jnp.float32), (num_q - n)[:, None]], axis=1)
    log_b = jnp.where(col_mass > 0, jnp.log(jnp.maximum(col_mass, 1e-30)), -jnp.inf)
    decay_steps = max(1, (3 * num_iters) // 4)
    ratio = (eps_end / eps_start) ** (1.0 / decay_steps)

    def step(t, fg):
        f, g = fg
        eps = jnp.maximum(eps_start * ratio ** t.astype(jnp.float32), eps_end)
        # f_q = -eps * LSE_j(log b_j + (g_j - C_qj) / eps)   (query mass 1)
        zf = log_b[:, None, :] + (g[:, None, :] - full) / eps
        zf = jnp.where(jnp.isfinite(log_b)[:, None, :], zf, -jnp.inf)
        f = -eps * jax.nn.logsumexp(zf, axis=2)
        # g_j = eps * log b_j - eps * LSE_q((f_q - C_qj) / eps)
        zg = (f[:, :, None] - full) / eps
        g = jnp.where(jnp.isfinite(log_b), eps * log_b - eps * jax.nn.logsumexp(zg, axis=1), 0.0)
        return f, g

    f0 = jnp.zeros((batch, num_q), jnp.float32)
    g0 = jnp.zeros((batch, num_g + 1), jnp.float32)
    return jax.lax.fori_loop(0, num_iters, step, (f0, g0))


class SinkhornMatcher(InJitMatcher):
    """Sinkhorn matcher, rounded by an auction phase; see the module docstring.

    ``__call__(cost [B, Q, G] f32, gt_valid [B, G] bool) -> match [B, G] int32``.

    Settings:
      num_iters: int >= 1, Sinkhorn iterations (default 60).
      eps_start, eps_end: floats > 0, entropic regularisation at the first and the last
        iterations, relative to the cost span (defaults 0.5 and 2e-3; geometric decay over
        the first 3/4 of the iterations).
      round_eps: float > 0, eps of the rounding auction, relative to the cost span (default
        1e-3): the total is within ``Q * round_eps * span`` of the optimum.
      round_max_rounds: int >= 1, bidding rounds allowed to the rounding auction (default
        2000; when it is reached a greedy completion keeps the answer valid, no bound).
    """

    def __init__(
        self,
        num_iters: int = 60,
        eps_start: float = 0.5,
        eps_end: float = 2e-3,
        round_eps: float = 1e-3,
        round_max_rounds: int = 2000,
    ) -> None:
        self.num_iters = int_setting("sinkhorn", "num_iters", num_iters, 1)
        self.eps_start = positive_setting("sinkhorn", "eps_start", eps_start)
        self.eps_end = positive_setting("sinkhorn", "eps_end", eps_end)
        self.round_eps = positive_setting("sinkhorn", "round_eps", round_eps)
        self.round_max_rounds = int_setting("sinkhorn", "round_max_rounds", round_max_rounds, 1)

    def solve(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        total_q = cost.shape[1]
        valid3 = jnp.broadcast_to(gt_valid[:, None, :], cost.shape)
        lo = jnp.min(jnp.where(valid3, cost, jnp.inf), axis=(1, 2))
        hi = jnp.max(jnp.where(valid3, cost, -jnp.inf), axis=(1, 2))
        has = jnp.any(gt_valid, axis=1)
        lo = jnp.where(has, lo, 0.0)
        span = jnp.where(has & (hi > lo), hi - lo, 1.0)
        normed = jnp.where(valid3, (cost - lo[:, None, None]) / span[:, None, None], 0.0)
        f, _ = sinkhorn_potentials(normed, gt_valid, self.num_iters, self.eps_start, self.eps_end)

        cost_t, unit = to_int_costs(cost, gt_valid)
        to_int = span / unit * (total_q + 1)  # normalised cost unit -> auction int unit
        price = -f * to_int[:, None]
        price = jnp.clip(price - jnp.min(price, axis=1, keepdims=True), 0, 2**28)
        eps = jnp.maximum(jnp.round(self.round_eps * to_int), 1).astype(jnp.int32)
        match = auction_int(
            cost_t,
            gt_valid,
            price.astype(jnp.int32),
            eps,
            theta=2,
            max_rounds=self.round_max_rounds,
            eps_final=eps,
        )
        return match
