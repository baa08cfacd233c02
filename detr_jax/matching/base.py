"""Matcher interface and helpers shared by all bipartite matchers.

A matcher assigns, per image, a distinct query to every valid ground-truth (GT)
slot so as to minimise the summed cost. It is called inside jitted code:

    match = matcher(cost, gt_valid)   # cost [B, Q, G] float32, gt_valid [B, G] bool
                                      # -> match [B, G] int32

``match[b, g]`` is the query index assigned to GT slot ``g`` of image ``b``,
``-1`` for invalid (padding) slots; the indices of one image are distinct.

Matchers assume ``Q >= number of valid GT`` in every image. ``G`` is the padded
``max_boxes`` of the batch; configuration validation guarantees ``G <= Q``, so
this is not re-checked here. (A matcher may still return ``-1`` for a valid slot
it could not assign; the loss treats such slots as unmatched.)
"""

from __future__ import annotations

import abc
import numbers

import jax.numpy as jnp


def int_setting(matcher: str, field: str, value: object, minimum: int) -> int:
    """``value`` of the setting ``matcher.<field>`` as an int ``>= minimum``.

    Raises:
      ValueError: (one line naming the matcher and ``matcher.<field>``) otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(
            f"matcher {matcher!r}: matcher.{field}={value!r} must be an integer >= {minimum}"
        )
    return int(value)


def positive_setting(matcher: str, field: str, value: object) -> float:
    """``value`` of the setting ``matcher.<field>`` as a float ``> 0`` (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"matcher {matcher!r}: matcher.{field}={value!r} must be a number > 0")
    return float(value)


class Matcher(abc.ABC):
    """Bipartite matcher: ``__call__(cost [B,Q,G] f32, gt_valid [B,G] bool) -> [B,G] i32``.

    Settings are the keyword arguments of the constructor (``get_matcher(name, **settings)``;
    :func:`detr_jax.matching.matcher_settings` lists them). This base has none.
    """

    @abc.abstractmethod
    def __call__(self, cost: jnp.ndarray, gt_valid: jnp.ndarray) -> jnp.ndarray:
        """Return ``match`` [B, G] int32: query per GT slot, -1 on invalid slots.

        Args:
          cost: [B, Q, G] float32 cost (rows = queries, columns = GT slots). Values
            in invalid columns are arbitrary and must be ignored.
          gt_valid: [B, G] bool, True for real GT boxes.
        """


def unmatched_query_mask(match: jnp.ndarray, num_queries: int) -> jnp.ndarray:
    """Queries that no GT slot is assigned to.

    Args:
      match: [..., G] int32 query index per GT slot, -1 for none.
      num_queries: Q.

    Returns:
      [..., Q] bool, True for queries without a GT (targets of "no object").
    """
    hits = (match[..., :, None] == jnp.arange(num_queries, dtype=match.dtype)) & (
        match[..., :, None] >= 0
    )
    return ~jnp.any(hits, axis=-2)


def match_to_query_targets(
    match: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_valid: jnp.ndarray,
    num_queries: int,
    no_object_class: int,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Scatter per-GT targets onto the queries they are matched to.

    Args:
      match: [B, G] int32 query index per GT slot (-1 = none).
      gt_labels: [B, G] int32 labels.
      gt_boxes: [B, G, 4] boxes (any format; copied as is).
      gt_valid: [B, G] bool; slots that are invalid are treated as unmatched.
      num_queries: Q.
      no_object_class: label given to unmatched queries (``num_classes``).

    Returns:
      ``(target_classes [B, Q] int32, target_boxes [B, Q, 4], matched [B, Q] bool)``;
      unmatched queries get ``no_object_class`` and zero boxes.
    """
    batch = match.shape[0]
    ok = gt_valid & (match >= 0) & (match < num_queries)
    # Out-of-range index Q for unmatched slots: dropped by the scatter.
    q_idx = jnp.where(ok, match, num_queries).astype(jnp.int32)
    b_idx = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], q_idx.shape)
    target_classes = jnp.full((batch, num_queries), no_object_class, jnp.int32)
    target_classes = target_classes.at[b_idx, q_idx].set(gt_labels.astype(jnp.int32), mode="drop")
    target_boxes = jnp.zeros((batch, num_queries, gt_boxes.shape[-1]), gt_boxes.dtype)
    target_boxes = target_boxes.at[b_idx, q_idx].set(gt_boxes, mode="drop")
    matched = jnp.zeros((batch, num_queries), bool).at[b_idx, q_idx].set(True, mode="drop")
    return target_classes, target_boxes, matched
