"""Bertsekas' auction with eps-scaling and block-Jacobi bidding, batched, inside ``jit``.

Formulation. Persons are the valid ground-truth slots of an image (``n`` of them),
objects are the ``Q`` queries, and the ``S = Q - n`` queries that stay without a slot
are given to a *sink*: ``S`` identical zero-cost persons bidding as one group (the
"similar persons" device), which makes the problem square (``Q`` persons, ``Q``
objects). Asymmetric forward auction alone is not correct under eps-scaling (queries
priced in an earlier phase could end up free at a high price); with the sink every
query is held at the end of a phase and eps-complementary slackness (eps-CS) holds for
all ``Q`` persons, so the total cost is within ``Q * eps`` of the optimum.

Integer arithmetic. Costs are shifted by the image minimum ``lo``, divided by a unit
and rounded to integers, then multiplied by ``Q + 1``; prices and bids are int32 and
the last phase runs at ``eps = 1``, i.e. ``eps = 1 / (Q + 1)`` in the (possibly
quantised) cost unit. Hence:

* integer costs with ``(hi - lo) * (Q + 1) <= 2^27`` (unit 1): the result is EXACT,
  because the gap is at most ``Q / (Q + 1) < 1`` and costs are integers
  (``eps < 1/Q <= 1/min(Q, G)`` for the padded square problem);
* other (float) costs: unit ``= (hi - lo) * (Q + 1) / 2^27`` (rounding error at most
  ``unit / 2`` per entry); the result is optimal for the rounded costs, hence within
  ``n * unit + Q * unit / (Q + 1)`` of the true optimum, i.e. about
  ``(n + 1) * (Q + 1) * 7.5e-9 * (hi - lo)``: a relative-to-span bound of 2.3e-4 at
  ``Q = 300, n = 100``, in practice far smaller.

Bidding. In each round up to ``block`` (32) unassigned slots per image bid at once
(Jacobi within the block: the highest bid per query wins), and the sink bids for the
``k`` cheapest queries it lacks at the ``(k+1)``-th cheapest price + eps. A new phase
keeps the holdings still eps-happy under the smaller eps and lowers the prices of the
queries it frees as far as the kept holders allow (a valid price decrease that avoids
most sink-versus-slot price wars). Each round costs ``O(B * block * Q)`` plus
``O(B * Q log Q)`` (a sort of the prices); phases divide eps by ``theta``; each image
runs its own schedule in ONE fused ``lax.while_loop`` of at most ``max_rounds`` rounds
(if exhausted, a greedy completion keeps the answer valid but the guarantee is void).
The number of rounds is data dependent (price wars): this solver is exact but slow on
CPU; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from detr_jax.matching._common import InJitMatcher
from detr_jax.matching.base import int_setting

# Scaled integer costs span at most this many units (prices stay far below 2^31).
INT_RANGE = 2**27
_NEG = -(2**30)


def to_int_costs(cost: jnp.ndarray, gt_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Quantise finite costs [B, Q, G] to int32 ``(cost - lo) / unit * (Q + 1)``.

    Returns ``(int_cost_t [B, G, Q], unit [B])``: ``unit = 1`` for integer-valued images
    whose scaled span fits :data:`INT_RANGE`, else ``span * (Q + 1) / INT_RANGE``.
    """
    num_q = cost.shape[1]
    mult = num_q + 1
    valid = jnp.broadcast_to(gt_valid[:, None, :], cost.shape)
    lo = jnp.min(jnp.where(valid, cost, jnp.inf), axis=(1, 2))
    hi = jnp.max(jnp.where(valid, cost, -jnp.inf), axis=(1, 2))
    has = jnp.any(gt_valid, axis=1)
    lo, hi = jnp.where(has, lo, 0.0), jnp.where(has, hi, 0.0)
    span = hi - lo
    integral = jnp.all(jnp.where(valid, cost == jnp.round(cost), True), axis=(1, 2))
    fits = span * mult <= INT_RANGE
    unit = jnp.where(integral & fits, 1.0, jnp.maximum(span, 1e-30) * mult / INT_RANGE)
    scaled = jnp.round((cost - lo[:, None, None]) / unit[:, None, None])
    scaled = jnp.clip(jnp.where(valid, scaled, 0.0), 0, INT_RANGE // mult)
    return jnp.swapaxes(scaled.astype(jnp.int32) * mult, 1, 2), unit


def auction_int(
    cost_t: jnp.ndarray,
    gt_valid: jnp.ndarray,
    price: jnp.ndarray,
    eps: jnp.ndarray,
    theta: int,
    max_rounds: int,
    block: int = 32,
    eps_final: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Integer auction with eps-scaling on ``cost_t`` [B, G, Q] int32 (slots x queries).

    Args:
      cost_t: [B, G, Q] int32 non-negative costs (invalid slots ignored).
      gt_valid: [B, G] bool persons.
      price: [B, Q] int32 initial query prices (any values; 0 for a cold start).
      eps: [B] int32 first-phase eps (>= 1); each phase divides it by ``theta`` down to 1.
      theta: eps reduction factor (>= 2).
      max_rounds: bound on bidding rounds over all phases.
      block: at most this many unassigned slots per image bid in one round.
      eps_final: [B] int32 eps of the last phase (default 1: exact for the int costs).

    Returns:
      [B, G] int32 query held by each slot at the end (-1 if the budget ran out first).
    """
    batch, num_g, num_q = cost_t.shape
    b_idx = jnp.arange(batch, dtype=jnp.int32)[:, None]
    g_ar = jnp.arange(num_g, dtype=jnp.int32)
    q_ar = jnp.arange(num_q, dtype=jnp.int32)
    n_valid = jnp.sum(gt_valid, axis=1).astype(jnp.int32)
    sink_cap = num_q - n_valid
    sink = num_g  # owner id of the sink
    block = max(1, min(block, num_g))
    eps_last = jnp.ones((batch,), jnp.int32) if eps_final is None else eps_final

    def holders(owner):
        # [B, G] query held by each slot (-1 if none)
        tgt = jnp.where((owner >= 0) & (owner < num_g), owner, num_g)
        return jnp.full((batch, num_g), -1, jnp.int32).at[b_idx, tgt].set(q_ar, mode="drop")

    def new_phase(owner, price, eps, next_phase):
        # Keep only the holdings still eps-happy under the smaller eps, then reprice the
        # queries this frees to the lowest level at which every kept holder stays
        # eps-happy (a valid price decrease; without it a query freed at a high price
        # forces the sink into a long price war before it can take it).
        eps = jnp.where(next_phase, jnp.maximum(eps // theta, eps_last), eps)
        obj_of = holders(owner)
        value = -cost_t - price[:, None, :]
        best = jnp.max(value, axis=2)
        held_value = jnp.take_along_axis(value, jnp.maximum(obj_of, 0)[..., None], axis=2)[..., 0]
        real_ok = held_value >= best - eps[:, None]
        keep_real = jnp.take_along_axis(real_ok, jnp.clip(owner, 0, num_g - 1), axis=1)
        keep_sink = price <= jnp.min(price, axis=1, keepdims=True) + eps[:, None]
        keep = jnp.where(owner == sink, keep_sink, (owner >= 0) & keep_real)
        drop = next_phase[:, None] & ~keep
        kept_real = gt_valid & (obj_of >= 0) & real_ok
        slack = jnp.where(kept_real, held_value + eps[:, None], -_NEG)  # [B, G]
        need_real = jnp.max(jnp.where(kept_real[..., None], -cost_t - slack[..., None], _NEG), 1)
        kept_sink = (owner == sink) & keep_sink
        need_sink = jnp.max(jnp.where(kept_sink, price - eps[:, None], _NEG), 1, keepdims=True)
        floor = jnp.min(price, axis=1, keepdims=True)
        repriced = jnp.minimum(price, jnp.maximum(jnp.maximum(need_real, need_sink), floor))
        return jnp.where(drop, -1, owner), jnp.where(drop, repriced, price), eps

    def body(s):
        owner, price, eps, done, it = s
        obj_of = holders(owner)
        in_sink = owner == sink
        n_sink = jnp.sum(in_sink, axis=1).astype(jnp.int32)
        complete = jnp.all(~gt_valid | (obj_of >= 0), axis=1) & (n_sink == sink_cap)
        finish = complete & (eps <= eps_last)
        next_phase = complete & ~finish
        active = ~done & ~complete
        owner, price, eps = lax.cond(
            jnp.any(next_phase),
            new_phase,
            lambda o, p, e, n: (o, p, e),
            owner,
            price,
            eps,
            next_phase,
        )

        # Up to `block` unassigned persons bid for their best query, raising its price by
        # (best - second) + eps; the highest bid per query wins (Jacobi within the block).
        bidder = active[:, None] & gt_valid & (obj_of < 0)
        slot = jnp.where(bidder, jnp.cumsum(bidder, axis=1) - 1, block)  # no argsort: slow on CPU
        who = jnp.full((batch, block), num_g, jnp.int32).at[b_idx, slot].set(g_ar, mode="drop")
        bidder = who < num_g
        who = jnp.minimum(who, num_g - 1)  # [B, K] bidding slots
        value = -jnp.take_along_axis(cost_t, who[..., None], axis=1) - price[:, None, :]
        best_q = jnp.argmax(value, axis=2).astype(jnp.int32)
        best = jnp.max(value, axis=2)
        second = jnp.max(jnp.where(q_ar == best_q[..., None], _NEG, value), axis=2)
        second = jnp.where(num_q > 1, second, best)
        bid = jnp.take_along_axis(price, best_q, axis=1) + (best - second) + eps[:, None]
        bid = jnp.where(bidder, bid, _NEG)
        top = jnp.full((batch, num_q), _NEG, jnp.int32).at[b_idx, best_q].max(bid)
        is_top = bidder & (bid == jnp.take_along_axis(top, best_q, axis=1))
        winner = jnp.full((batch, num_q), num_g, jnp.int32)
        winner = winner.at[b_idx, best_q].min(jnp.where(is_top, who, num_g))

        # Sink with k free units: bids on the k cheapest queries it does not hold, at the
        # (k+1)-th cheapest price + eps (each unit then is eps-happy).
        k = sink_cap - n_sink
        masked = jnp.where(in_sink, jnp.iinfo(jnp.int32).max, price)
        kth = jnp.take_along_axis(jnp.sort(masked, axis=1), jnp.minimum(k, num_q - 1)[:, None], 1)
        below = masked < kth
        tie = masked == kth
        tie_rank = jnp.cumsum(tie, axis=1) - 1
        chosen = below | (tie & (tie_rank < (k - jnp.sum(below, axis=1))[:, None]))
        level = jnp.where(n_valid[:, None] > 0, kth, price)
        sink_bid = jnp.where(
            active[:, None] & (k[:, None] > 0) & ~in_sink & chosen,
            level + eps[:, None],
            _NEG,
        )

        sink_wins = sink_bid > top
        real_wins = ~sink_wins & (top > _NEG)
        new_owner = jnp.where(sink_wins, sink, jnp.where(real_wins, winner, owner))
        new_price = jnp.where(sink_wins, sink_bid, jnp.where(real_wins, top, price))
        return new_owner, new_price, eps, done | finish, it + 1

    def cond(s):
        return jnp.any(~s[3]) & (s[4] < max_rounds)

    owner0 = jnp.full((batch, num_q), -1, jnp.int32)
    done0 = jnp.zeros((batch,), bool)
    owner = lax.while_loop(cond, body, (owner0, price, eps, done0, jnp.int32(0)))[0]
    return jnp.where(gt_valid, holders(owner), -1)


class AuctionMatcher(InJitMatcher):
    """Auction matcher (eps-scaling, block-Jacobi bids, int32 prices); see the module docstring.

    ``__call__(cost [B, Q, G] f32, gt_valid [B, G] bool) -> match [B, G] int32``.
    The first phase's eps is a quarter of each image's (integer-scaled) cost span and the
    last phase's is 1 integer unit (``1 / (Q + 1)`` of the quantisation unit); these are
    fixed, the schedule between them is set by ``theta``.

    Settings:
      theta: int >= 2, eps reduction factor per phase (default 8; fewer phases with a
        larger factor, but more rounds per phase).
      max_rounds: int >= 1, bidding rounds over all phases before the greedy fallback
        (default 20000; when it is reached the answer is valid but not guaranteed).
    """

    def __init__(self, theta: int = 8, max_rounds: int = 20000) -> None:
        self.theta = int_setting("auction", "theta", theta, 2)
        self.max_rounds = int_setting("auction", "max_rounds", max_rounds, 1)

    def solve(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        batch, total_q = cost.shape[:2]
        cost_t, _ = to_int_costs(cost, gt_valid)
        span = jnp.max(jnp.where(gt_valid[:, :, None], cost_t, 0), axis=(1, 2))
        eps0 = jnp.maximum(span // 4, 1).astype(jnp.int32)
        price0 = jnp.zeros((batch, total_q), jnp.int32)
        match = auction_int(cost_t, gt_valid, price0, eps0, self.theta, self.max_rounds)
        return match
