"""detr_jax.matching: bipartite matchers behind one interface, and the matching cost.

``get_matcher(name, **settings)`` builds a matcher from :data:`MATCHERS`; every
matcher maps ``(cost [B,Q,G] float32, gt_valid [B,G] bool) -> match [B,G] int32``
(see :mod:`detr_jax.matching.base`); :func:`matcher_settings` lists a matcher's settings.
``matching_cost(..., weights)`` builds the cost from the terms of :data:`COST_TERMS`;
``detr_cost`` is DETR's (class 1, L1 5, GIoU 2). See ``docs/matching.md``.
"""

from __future__ import annotations

import inspect

from detr_jax.matching.auction import AuctionMatcher
from detr_jax.matching.base import Matcher, match_to_query_targets, unmatched_query_mask
from detr_jax.matching.cost_terms import COST_TERMS, cost_term_settings
from detr_jax.matching.costs import DETR_COST_WEIGHTS, check_cost_weights, detr_cost, matching_cost
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


def _check_name(name: str) -> type[Matcher]:
    if name not in MATCHERS:
        raise ValueError(f"unknown matcher {name!r}; choose one of {sorted(MATCHERS)}")
    return MATCHERS[name]


def matcher_settings(name: str) -> tuple[str, ...]:
    """Names of the keyword settings that ``get_matcher(name, ...)`` accepts (may be empty).

    Raises:
      ValueError: if ``name`` is not registered (the message lists the choices).
    """
    init = _check_name(name).__init__
    if init is object.__init__:  # no constructor of its own: no settings
        return ()
    params = list(inspect.signature(init).parameters.values())[1:]
    return tuple(
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    )


def get_matcher(name: str, **settings) -> Matcher:
    """Instantiate the matcher registered under ``name`` with keyword ``settings``.

    Raises:
      ValueError: (one line) if ``name`` is not registered (listing the choices), if a
        setting is not one of :func:`matcher_settings` (naming the matcher, the field as
        ``matcher.<field>`` and the accepted ones), or if a value is out of range.
    """
    cls = _check_name(name)
    accepted = matcher_settings(name)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        listed = ", ".join(f"matcher.{f}" for f in accepted) or "none"
        raise ValueError(
            f"matcher {name!r} has no setting {', '.join(f'matcher.{f}' for f in unknown)}; "
            f"accepted: {listed}"
        )
    return cls(**settings)


__all__ = [
    "COST_TERMS",
    "DETR_COST_WEIGHTS",
    "MATCHERS",
    "AuctionMatcher",
    "GreedyMatcher",
    "HungarianJaxMatcher",
    "HungarianScipyMatcher",
    "SinkhornMatcher",
    "Matcher",
    "check_cost_weights",
    "cost_term_settings",
    "detr_cost",
    "get_matcher",
    "match_to_query_targets",
    "matcher_settings",
    "matching_cost",
    "unmatched_query_mask",
]
