"""Exact Hungarian matching on the host with ``scipy.optimize.linear_sum_assignment``.

The whole batch goes to the host in ONE ``jax.pure_callback``; the host function
loops over images in numpy and hands scipy only the valid GT columns. It works
under ``jit`` and ``vmap`` (``vmap_method="broadcast_all"``: the host function
accepts any number of leading batch dimensions and flattens them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from detr_jax.matching.base import Matcher

# Host-side bound on |cost|: NaN/+inf become +_HOST_LARGE, -inf becomes -_HOST_LARGE,
# and finite values are clipped into the same range so scipy never raises.
_HOST_LARGE = 1e12


def hungarian_match_numpy(cost: np.ndarray, gt_valid: np.ndarray) -> np.ndarray:
    """Optimal assignment for a batch of cost matrices, in numpy.

    Args:
      cost: [..., Q, G] cost (rows = queries, columns = GT slots), any float dtype.
      gt_valid: [..., G] bool (same leading dims as ``cost``).

    Returns:
      [..., G] int32 query index per GT slot, -1 for invalid slots (and for valid
      slots left over when an image has more valid GT than queries).
    """
    cost = np.asarray(cost, dtype=np.float64)
    gt_valid = np.asarray(gt_valid, dtype=bool)
    *lead, num_q, num_g = cost.shape
    flat_cost = cost.reshape(-1, num_q, num_g)
    flat_valid = np.broadcast_to(gt_valid, (*lead, num_g)).reshape(-1, num_g)
    flat_cost = np.nan_to_num(flat_cost, nan=_HOST_LARGE, posinf=_HOST_LARGE, neginf=-_HOST_LARGE)
    flat_cost = np.clip(flat_cost, -_HOST_LARGE, _HOST_LARGE)
    out = np.full(flat_valid.shape, -1, dtype=np.int32)
    for i in range(flat_cost.shape[0]):
        cols = np.flatnonzero(flat_valid[i])
        if cols.size == 0 or num_q == 0:
            continue
        rows, sub_cols = linear_sum_assignment(flat_cost[i][:, cols])
        out[i, cols[sub_cols]] = rows.astype(np.int32)
    return out.reshape(*lead, num_g)


class HungarianScipyMatcher(Matcher):
    """Exact matcher (scipy's Jonker-Volgenant solver) via one host callback.

    ``__call__(cost [B, Q, G] f32, gt_valid [B, G] bool) -> match [B, G] int32``.
    The callback blocks the device step while the host solves; it is exact but
    serial, so faster on-device matchers exist for large batches. Settings: none.
    """

    def __call__(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        cost = jax.lax.stop_gradient(jnp.asarray(cost, jnp.float32))
        gt_valid = jax.lax.stop_gradient(jnp.asarray(gt_valid, bool))
        if cost.ndim != 3 or gt_valid.shape != (cost.shape[0], cost.shape[2]):
            raise ValueError(
                f"expected cost [B,Q,G] and gt_valid [B,G], got {cost.shape} and {gt_valid.shape}"
            )
        out_shape = jax.ShapeDtypeStruct(gt_valid.shape, jnp.int32)
        return jax.pure_callback(
            hungarian_match_numpy, out_shape, cost, gt_valid, vmap_method="broadcast_all"
        )
