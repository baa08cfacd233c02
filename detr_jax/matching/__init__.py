"""detr_jax.matching: bipartite matchers behind one interface, and the DETR cost.

``get_matcher(name, **kwargs)`` builds a matcher from :data:`MATCHERS`; every
matcher maps ``(cost [B,Q,G] float32, gt_valid [B,G] bool) -> match [B,G] int32``
(see :mod:`detr_jax.matching.base`).
"""

from __future__ import annotations

from detr_jax.matching.auction import AuctionMatcher
from detr_jax.matching.base import Matcher, match_to_query_targets, unmatched_query_mask
from detr_jax.matching.costs import detr_cost
from detr_jax.matching.greedy import GreedyMatcher
from detr_jax.matching.hungarian_jax import HungarianJaxMatcher
from detr_jax.matching.hungarian_scipy import HungarianScipyMatcher
from detr_jax.matching.sinkhorn import SinkhornMatcher

MATCHERS: dict[str, type[Matcher]] = {
    "hungarian_scipy": HungarianScipyMatcher,
    "hungarian_jax": HungarianJaxMatcher,
    "auction": AuctionMatcher,
    "sinkhorn": SinkhornMatcher,
    "greedy": GreedyMatcher,
}


def get_matcher(name: str, **kwargs) -> Matcher:
    """Instantiate the matcher registered under ``name`` with ``kwargs``.

    Raises:
      ValueError: if ``name`` is not registered (the message lists the choices).
    """
    if name not in MATCHERS:
        raise ValueError(f"unknown matcher {name!r}; choose one of {sorted(MATCHERS)}")
    return MATCHERS[name](**kwargs)


__all__ = [
    "MATCHERS",
    "AuctionMatcher",
    "GreedyMatcher",
    "HungarianJaxMatcher",
    "HungarianScipyMatcher",
    "SinkhornMatcher",
    "Matcher",
    "detr_cost",
    "get_matcher",
    "match_to_query_targets",
    "unmatched_query_mask",
]
