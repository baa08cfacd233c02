"""Shared helpers of the in-jit matchers: input checks, sanitising, validity repair.

All helpers are pure ``jax.numpy`` and work under ``jit``. Shapes: ``cost [B, Q, G]``
(rows = queries, columns = ground-truth slots), ``gt_valid [B, G]``, ``match [B, G]``.
"""

from __future__ import annotations

import abc

import jax.numpy as jnp
from jax import lax

from detr_jax.matching.base import Matcher

# Finite costs are clipped into [-_CLIP, _CLIP] so that the penalties below stay finite.
_CLIP = 1e12


def check_inputs(cost: jnp.ndarray, gt_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Cast to float32 / bool, cut gradients and check ``[B,Q,G]`` / ``[B,G]`` shapes."""
    cost = lax.stop_gradient(jnp.asarray(cost, jnp.float32))
    gt_valid = lax.stop_gradient(jnp.asarray(gt_valid, bool))
    if cost.ndim != 3 or gt_valid.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(
            f"expected cost [B,Q,G] and gt_valid [B,G], got {cost.shape} and {gt_valid.shape}"
        )
    return cost, gt_valid


def sanitize(cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
    """Replace non-finite entries by finite penalties that preserve the lexicographic order.

    Per image, with ``lo``/``hi`` the extremes of its finite valid entries, ``n`` its
    number of valid slots and ``P = (n + 1) * (hi - lo + 1)``: NaN and ``+inf`` become
    ``hi + P`` and ``-inf`` becomes ``lo - P``. Since ``P`` exceeds the spread of any
    sum of ``n`` finite entries, a minimum-cost assignment of the sanitised matrix
    first uses as many ``-inf`` and as few ``+inf``/NaN entries as possible, then
    minimises the finite part: the same optimum scipy finds with huge penalties, but
    with magnitudes that float32 solvers handle. Invalid columns are set to 0.

    Args:
      cost: [B, Q, G] float32.
      gt_valid: [B, G] bool.

    Returns:
      [B, Q, G] float32, finite everywhere.
    """
    if cost.size == 0:
        return jnp.zeros_like(cost)
    valid = jnp.broadcast_to(gt_valid[:, None, :], cost.shape)
    finite = jnp.isfinite(cost) & valid
    clipped = jnp.clip(jnp.where(finite, cost, 0.0), -_CLIP, _CLIP)
    any_finite = jnp.any(finite, axis=(1, 2))
    lo = jnp.where(any_finite, jnp.min(jnp.where(finite, clipped, jnp.inf), axis=(1, 2)), 0.0)
    hi = jnp.where(any_finite, jnp.max(jnp.where(finite, clipped, -jnp.inf), axis=(1, 2)), 0.0)
    n = jnp.sum(gt_valid, axis=1).astype(jnp.float32)
    penalty = (n + 1.0) * (hi - lo + 1.0)
    bad_hi = (hi + penalty)[:, None, None]
    bad_lo = (lo - penalty)[:, None, None]
    out = jnp.where(jnp.isneginf(cost), bad_lo, bad_hi)
    out = jnp.where(finite, clipped, out)
    return jnp.where(valid, out, 0.0)


def pad_queries(cost: jnp.ndarray) -> jnp.ndarray:
    """Pad rows so that ``Q >= G`` (interface promises it; this keeps odd inputs safe).

    Padded rows cost more than any real row, so they are only used for slots that no
    real query can take; callers map indices ``>= Q_original`` back to -1.
    """
    batch, num_q, num_g = cost.shape
    if num_q >= num_g:
        return cost
    span = jnp.max(jnp.abs(cost), axis=(1, 2), keepdims=True)
    big = 2.0 * (num_g + 1.0) * (2.0 * span + 1.0)
    pad = jnp.broadcast_to(big, (batch, num_g - num_q, num_g))
    return jnp.concatenate([cost, pad], axis=1)


def prepare(cost: jnp.ndarray, gt_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, int]:
    """``check_inputs`` + ``sanitize`` + ``pad_queries``; returns ``(cost, gt_valid, Q)``."""
    cost, gt_valid = check_inputs(cost, gt_valid)
    num_q = cost.shape[1]
    return pad_queries(sanitize(cost, gt_valid)), gt_valid, num_q


def _complete(cost: jnp.ndarray, gt_valid: jnp.ndarray, match: jnp.ndarray) -> jnp.ndarray:
    """Give every valid slot still at -1 the cheapest query not yet taken (slot order)."""
    batch, num_q, num_g = cost.shape
    rows = jnp.arange(batch)
    taken0 = jnp.zeros((batch, num_q), bool).at[rows[:, None], match].set(match >= 0, mode="drop")

    def body(g, carry):
        match, taken = carry
        need = gt_valid[:, g] & (match[:, g] < 0) & ~jnp.all(taken, axis=1)
        q = jnp.argmin(jnp.where(taken, jnp.inf, cost[:, :, g]), axis=1).astype(jnp.int32)
        match = match.at[:, g].set(jnp.where(need, q, match[:, g]))
        taken = taken.at[rows, q].set(taken[rows, q] | need)
        return match, taken

    return lax.fori_loop(0, num_g, body, (match, taken0))[0]


def ensure_valid(
    cost: jnp.ndarray, gt_valid: jnp.ndarray, match: jnp.ndarray, num_q: int
) -> jnp.ndarray:
    """Repair ``match`` [B, G] into a valid one-to-one assignment (no-op when already valid).

    Invalid slots get -1; out-of-range and duplicate indices (all but the first slot) are
    dropped, then every valid slot left at -1 gets the cheapest free query (greedy, only
    run under a ``lax.cond`` when needed). Indices ``>= num_q`` (padded rows) become -1.
    Cost O(B G^2) for the duplicate check, plus O(B Q G^2) when repair is needed.
    """
    match = match.astype(jnp.int32)
    total_q = cost.shape[1]
    if match.shape[1] == 0:
        return match
    match = jnp.where(gt_valid & (match >= 0) & (match < total_q), match, -1)
    num_g = match.shape[1]
    same = (match[:, :, None] == match[:, None, :]) & (match[:, :, None] >= 0)
    earlier = jnp.tril(jnp.ones((num_g, num_g), bool), k=-1)  # [g, g'] with g' < g
    dup = jnp.any(same & earlier[None], axis=2)
    match = jnp.where(dup, -1, match)
    need = jnp.any(gt_valid & (match < 0)) & (total_q > 0)
    match = lax.cond(need, _complete, lambda c, v, m: m, cost, gt_valid, match)
    return jnp.where(match < num_q, match, -1).astype(jnp.int32)


class InJitMatcher(Matcher):
    """A matcher solved inside ``jit``: ``prepare`` -> ``solve`` -> ``ensure_valid``.

    Subclasses implement :meth:`solve` on a finite cost with ``Q >= G`` and at least one slot;
    this template does the input checks, the shared non-finite rule (:func:`sanitize`), the
    zero-slot case and the final repair into a valid one-to-one assignment.
    """

    def __call__(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        cost, gt_valid, num_q = prepare(cost, gt_valid)
        if cost.shape[2] == 0:
            return jnp.full(gt_valid.shape, -1, jnp.int32)
        return ensure_valid(cost, gt_valid, self.solve(cost, gt_valid), num_q)

    @abc.abstractmethod
    def solve(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        """cost [B, Q', G] finite (Q' >= G, padded rows last), gt_valid [B, G] -> [B, G]."""


__all__ = [
    "InJitMatcher",
    "check_inputs",
    "ensure_valid",
    "pad_queries",
    "prepare",
    "sanitize",
]
