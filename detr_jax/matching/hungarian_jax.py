"""Exact batched assignment inside ``jit``: shortest augmenting paths (Jonker-Volgenant style).

The ground-truth slots are the "rows" that must all be assigned, the queries the
"columns" (``Q >= G``). Per image the solver keeps dual potentials ``u [G]`` and
``v [Q]`` with reduced costs ``c[q, g] - u[g] - v[q] >= 0``, tight on matched pairs and
``v = 0`` on free queries, which certifies optimality of the rectangular problem.

1. Warm start (column reduction): ``u[g] = min_q c[q, g]``, ``v = 0``; each slot takes
   its argmin query when no lower-numbered slot claims the same one.
2. Every remaining valid slot is inserted by one Dijkstra search over the reduced costs
   (lazy dual update at the end of the search, as in Crouse's formulation of JV), then
   the alternating path is flipped.

The batch is vectorised as a per-image state machine inside ONE ``lax.while_loop``: in
each iteration an image does one Dijkstra step, or one step of walking its augmenting
path (the first walk step is fused with the last search step), or is done. The loop
runs ``max_b(search + augment steps of image b)`` iterations of ``O(B * Q)`` work each,
so the worst case is ``O(G^2)`` iterations, i.e. ``O(B G^2 Q)`` work, the usual cubic
bound; with the warm start most slots never need a search. Invalid slots are never
inserted (their answer is -1).

Guarantee: exact (minimum total cost over valid slots) up to float32 rounding of the
duals; non-finite costs are replaced by order-preserving finite penalties first
(:func:`detr_jax.matching._common.sanitize`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from detr_jax.matching._common import InJitMatcher

_SEARCH, _AUGMENT, _DONE = 0, 1, 2


def _next_root(gt_valid: jnp.ndarray, col4row: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """First valid slot without a query, per image: ``(index [B], exists [B])``."""
    free = gt_valid & (col4row < 0)
    return jnp.argmax(free, axis=1).astype(jnp.int32), jnp.any(free, axis=1)


def hungarian_solve(cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
    """Minimum-cost assignment of every valid slot to a distinct query.

    Args:
      cost: [B, Q, G] float32, finite, ``Q >= G``.
      gt_valid: [B, G] bool.

    Returns:
      [B, G] int32 query per slot, -1 for invalid slots.
    """
    batch, num_q, num_g = cost.shape
    if num_g == 0 or num_q == 0:
        return jnp.full((batch, num_g), -1, jnp.int32)
    cost_t = jnp.swapaxes(cost, 1, 2)  # [B, G, Q]: row g is the costs of slot g
    b_idx = jnp.arange(batch, dtype=jnp.int32)
    q_ar = jnp.arange(num_q, dtype=jnp.int32)
    g_ar = jnp.arange(num_g, dtype=jnp.int32)

    # Warm start: column reduction and conflict-free argmin assignment.
    u = jnp.where(gt_valid, jnp.min(cost_t, axis=2), 0.0)
    v = jnp.zeros((batch, num_q), jnp.float32)
    claim = jnp.argmin(cost_t, axis=2).astype(jnp.int32)  # [B, G]
    claimer = jnp.full((batch, num_q), num_g, jnp.int32)
    claimer = claimer.at[b_idx[:, None], claim].min(jnp.where(gt_valid, g_ar, num_g))
    won = gt_valid & (jnp.take_along_axis(claimer, claim, axis=1) == g_ar)
    col4row = jnp.where(won, claim, -1)
    row4col = jnp.full((batch, num_q), -1, jnp.int32)
    row4col = row4col.at[b_idx[:, None], jnp.where(won, claim, num_q)].set(g_ar, mode="drop")

    root, has_root = _next_root(gt_valid, col4row)
    state = dict(
        u=u,
        v=v,
        col4row=col4row,
        row4col=row4col,
        spc=jnp.full((batch, num_q), jnp.inf, jnp.float32),
        path=jnp.full((batch, num_q), -1, jnp.int32),
        sc=jnp.zeros((batch, num_q), bool),
        sr=jnp.zeros((batch, num_g), bool),
        root=root,
        row=root,
        min_val=jnp.zeros((batch,), jnp.float32),
        col=jnp.zeros((batch,), jnp.int32),
        mode=jnp.where(has_root, _SEARCH, _DONE).astype(jnp.int32),
    )

    def take(a, i):
        return jnp.take_along_axis(a, i[:, None], axis=1)[:, 0]

    def body(s):
        searching = s["mode"] == _SEARCH
        augmenting = s["mode"] == _AUGMENT

        # ---- one Dijkstra step from row s["row"] (images in SEARCH) ----
        i = s["row"]
        sr = s["sr"] | (searching[:, None] & (g_ar == i[:, None]))
        row_cost = jnp.take_along_axis(cost_t, i[:, None, None], axis=1)[:, 0, :]
        red = s["min_val"][:, None] + row_cost - take(s["u"], i)[:, None] - s["v"]
        better = searching[:, None] & ~s["sc"] & (red < s["spc"])
        spc = jnp.where(better, red, s["spc"])
        path = jnp.where(better, i[:, None], s["path"])
        cand = jnp.where(s["sc"], jnp.inf, spc)
        lowest = jnp.min(cand, axis=1)
        at_low = cand == lowest[:, None]
        free_low = at_low & (s["row4col"] < 0)
        j = jnp.where(
            jnp.any(free_low, axis=1), jnp.argmax(free_low, axis=1), jnp.argmax(at_low, axis=1)
        ).astype(jnp.int32)
        sc = s["sc"] | (searching[:, None] & (q_ar == j[:, None]))
        owner = take(s["row4col"], j)
        stuck = searching & ~jnp.isfinite(lowest)  # cannot happen for finite costs, Q >= G
        found = searching & (owner < 0) & ~stuck
        min_val = jnp.where(searching, lowest, s["min_val"])

        # Lazy dual update for images whose search just reached a free query.
        matched_spc = jnp.take_along_axis(spc, jnp.maximum(s["col4row"], 0), axis=1)
        du = jnp.where(sr & (g_ar != s["root"][:, None]), min_val[:, None] - matched_spc, 0.0)
        du = jnp.where(g_ar == s["root"][:, None], min_val[:, None], du)
        u = jnp.where(found[:, None], s["u"] + du, s["u"])
        dv = jnp.where(sc, min_val[:, None] - spc, 0.0)
        v = jnp.where(found[:, None], s["v"] - dv, s["v"])

        # ---- one step of flipping the augmenting path (images in AUGMENT, or whose
        # search just ended: a path with one row is then done in this same iteration) ----
        augmenting = augmenting | found
        jc = jnp.where(found, j, s["col"])
        pi = take(path, jc)
        old = take(s["col4row"], pi)
        row4col = jnp.where(augmenting[:, None] & (q_ar == jc[:, None]), pi[:, None], s["row4col"])
        col4row = jnp.where(augmenting[:, None] & (g_ar == pi[:, None]), jc[:, None], s["col4row"])
        finished = augmenting & (pi == s["root"])

        # ---- start the next search where an augmentation finished ----
        nroot, has_next = _next_root(gt_valid, col4row)
        restart = finished & has_next
        mode = jnp.where(found & ~finished, _AUGMENT, s["mode"])
        mode = jnp.where(stuck | (finished & ~has_next), _DONE, mode)
        mode = jnp.where(restart, _SEARCH, mode)
        r2 = restart[:, None]
        return dict(
            u=u,
            v=v,
            col4row=col4row,
            row4col=row4col,
            spc=jnp.where(r2, jnp.inf, spc),
            path=jnp.where(r2, -1, path),
            sc=jnp.where(r2, False, sc),
            sr=jnp.where(r2, False, sr),
            root=jnp.where(restart, nroot, s["root"]),
            row=jnp.where(restart, nroot, jnp.where(searching & ~found, owner, i)),
            min_val=jnp.where(restart, 0.0, min_val),
            col=jnp.where(augmenting, old, jc),
            mode=mode.astype(jnp.int32),
        )

    out = lax.while_loop(lambda s: jnp.any(s["mode"] != _DONE), body, state)
    return jnp.where(gt_valid, out["col4row"], -1).astype(jnp.int32)


class HungarianJaxMatcher(InJitMatcher):
    """Exact in-jit matcher (batched shortest augmenting path with a warm start).

    ``__call__(cost [B, Q, G] f32, gt_valid [B, G] bool) -> match [B, G] int32``.
    Complexity ``O(B G^2 Q)`` worst case, in at most ``O(G^2)`` sequential loop steps.
    Settings: none.
    """

    def solve(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        return hungarian_solve(cost, gt_valid)
