"""Property tests of the in-jit matchers against scipy.optimize.linear_sum_assignment.

Exact matchers (``hungarian_jax``; ``auction`` on integer costs) must reach scipy's
optimal total (relative 1e-6); approximate ones (``sinkhorn``, ``greedy``, ``auction`` on
float costs) must return valid assignments and their gap is reported / bounded. Shapes
are fixed per test so each jitted matcher compiles once per shape.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from detr_jax.matching import MATCHERS, Matcher, detr_cost, get_matcher  # noqa: E402
from detr_jax.matching._common import sanitize  # noqa: E402
from detr_jax.matching.hungarian_scipy import hungarian_match_numpy  # noqa: E402

IN_JIT = ("hungarian_jax", "auction", "sinkhorn", "greedy")
FAMILIES = ("uniform", "detr", "int_ties", "nonfinite")


@functools.cache
def jitted(name: str):
    return jax.jit(get_matcher(name))


def make_costs(family: str, rng: np.random.Generator, batch: int, num_q: int, num_g: int):
    """A cost family and a GT mask with a different number of real objects per image."""
    n_valid = rng.integers(0, num_g + 1, size=batch)
    if batch > 1:
        n_valid[0], n_valid[-1] = 0, num_g  # always an empty and a full image
    valid = np.zeros((batch, num_g), bool)
    for b in range(batch):
        valid[b, rng.choice(num_g, n_valid[b], replace=False)] = True
    if family == "detr":
        logits = rng.normal(size=(batch, num_q, 5)).astype(np.float32)
        centre = rng.uniform(0.1, 0.9, size=(batch, num_q, 2))
        size = rng.uniform(0.05, 0.5, size=(batch, num_q, 2))
        boxes = np.concatenate([centre, size], -1).astype(np.float32)
        gcentre = rng.uniform(0.1, 0.9, size=(batch, num_g, 2))
        gsize = rng.uniform(0.05, 0.5, size=(batch, num_g, 2))
        gboxes = np.concatenate([gcentre, gsize], -1).astype(np.float32)
        labels = rng.integers(0, 4, size=(batch, num_g)).astype(np.int32)
        cost = np.asarray(detr_cost(logits, boxes, labels, gboxes, valid))
    elif family == "int_ties":
        cost = rng.integers(0, 4, size=(batch, num_q, num_g)).astype(np.float32)
    else:
        cost = rng.uniform(-1, 1, size=(batch, num_q, num_g)).astype(np.float32)
    if family == "nonfinite":
        cost = cost.copy()
        pick = rng.uniform(size=cost.shape)
        cost[pick < 0.1] = np.nan
        cost[(pick >= 0.1) & (pick < 0.2)] = np.inf
        cost[(pick >= 0.2) & (pick < 0.23)] = -np.inf
        if batch > 1:
            cost[1, :, :] = np.nan  # an image with no finite entry at all
    return cost.astype(np.float32), valid


def scipy_optimum(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Optimal total per image on the sanitised cost (float64 scipy)."""
    clean = np.asarray(sanitize(jnp.asarray(cost), jnp.asarray(valid)), np.float64)
    out = np.zeros(cost.shape[0])
    for b in range(cost.shape[0]):
        cols = np.flatnonzero(valid[b])
        if cols.size:
            rows, sub = linear_sum_assignment(clean[b][:, cols])
            out[b] = clean[b][rows, cols[sub]].sum()
    return out


def totals(cost: np.ndarray, valid: np.ndarray, match: np.ndarray) -> np.ndarray:
    clean = np.asarray(sanitize(jnp.asarray(cost), jnp.asarray(valid)), np.float64)
    return np.array(
        [sum(clean[b, match[b, g], g] for g in np.flatnonzero(valid[b])) for b in range(len(cost))]
    )


def assert_valid(match: np.ndarray, valid: np.ndarray, num_q: int) -> None:
    assert match.dtype == np.int32 and match.shape == valid.shape
    for b in range(match.shape[0]):
        np.testing.assert_array_equal(match[b][~valid[b]], -1)
        got = match[b][valid[b]]
        assert np.all((got >= 0) & (got < num_q)), match[b]
        assert len(set(got.tolist())) == got.size, match[b]


def bad_count(x: np.ndarray) -> int:
    """(number of NaN / +inf entries) - (number of -inf entries): lexicographic key."""
    return int(np.sum(np.isnan(x) | np.isposinf(x)) - np.sum(np.isneginf(x)))


def rel_gap(got: np.ndarray, best: np.ndarray) -> np.ndarray:
    return (got - best) / np.maximum(1.0, np.abs(best))


def check_family(family: str, seed: int, shape: tuple[int, int, int]) -> dict[str, float]:
    """Run all in-jit matchers on one problem; assert the guarantees; return the gaps."""
    rng = np.random.default_rng(seed)
    cost, valid = make_costs(family, rng, *shape)
    best = scipy_optimum(cost, valid)
    gaps = {}
    for name in IN_JIT:
        match = np.asarray(jitted(name)(cost, valid))
        assert_valid(match, valid, shape[1])
        gap = rel_gap(totals(cost, valid, match), best)
        assert np.all(gap >= -1e-6), (name, gap)
        exact = name == "hungarian_jax" or (name == "auction" and family == "int_ties")
        if exact:
            assert np.all(gap <= 1e-6), (name, family, gap)
        gaps[name] = float(gap.max())
    if family == "nonfinite":
        # The exact matcher uses as few NaN/+inf and as many -inf entries as scipy does.
        ref = hungarian_match_numpy(cost, valid)
        match = np.asarray(jitted("hungarian_jax")(cost, valid))
        for b in range(shape[0]):
            cols = np.flatnonzero(valid[b])
            mine, theirs = cost[b, match[b, cols], cols], cost[b, ref[b, cols], cols]
            assert bad_count(mine) == bad_count(theirs)
    return gaps


@pytest.mark.slow  # multi-second compile: the full suite runs it
@settings(max_examples=20, deadline=None)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 2**31 - 1))
def test_small_rectangular(family, seed):
    """Q=9 > G=5, per-image G in 0..5, all cost families."""
    check_family(family, seed, (4, 9, 5))


@settings(max_examples=10, deadline=None)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 2**31 - 1))
def test_square(family, seed):
    """G = Q (the hardest case for the rounding matchers: no slack query)."""
    check_family(family, seed, (3, 6, 6))


@settings(max_examples=8, deadline=None)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 2**31 - 1))
def test_single_slot(family, seed):
    """G = 1."""
    check_family(family, seed, (3, 7, 1))


@pytest.mark.slow  # multi-second compile: the full suite runs it
@settings(max_examples=3, deadline=None)
@given(family=st.sampled_from(FAMILIES), seed=st.integers(0, 2**31 - 1))
def test_detr_scale_batch(family, seed):
    """Q=100, G=20: the DETR default shape, varied G per image."""
    check_family(family, seed, (4, 100, 20))


def test_q300_g100_exact():
    """Q=300, G=100, integer costs with ties: hungarian_jax and the auction are exact."""
    rng = np.random.default_rng(0)
    cost, valid = make_costs("int_ties", rng, 2, 300, 100)
    best = scipy_optimum(cost, valid)
    for name in ("hungarian_jax", "auction"):
        match = np.asarray(jitted(name)(cost, valid))
        assert_valid(match, valid, 300)
        np.testing.assert_allclose(totals(cost, valid, match), best, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_q300_g100_all(family):
    """Q=300, G=100 with every matcher and family (slow: ~20 s per family)."""
    check_family(family, 0, (2, 300, 100))


@pytest.mark.parametrize("name", IN_JIT)
def test_no_gt_slots(name):
    """G = 0, and images whose slots are all invalid, give -1 everywhere."""
    empty = np.asarray(jitted(name)(np.zeros((2, 5, 0), np.float32), np.zeros((2, 0), bool)))
    assert empty.shape == (2, 0) and empty.dtype == np.int32
    none = np.asarray(jitted(name)(np.ones((4, 9, 5), np.float32), np.zeros((4, 5), bool)))
    np.testing.assert_array_equal(none, -1)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n == "hungarian_jax" else pytest.mark.slow) for n in IN_JIT],
)
def test_more_slots_than_queries_is_safe(name):
    """Q < G breaks the interface promise; still a valid answer (extra slots get -1)."""
    cost = np.random.default_rng(1).uniform(size=(2, 2, 3)).astype(np.float32)
    match = np.asarray(jitted(name)(cost, np.ones((2, 3), bool)))
    for b in range(2):
        got = match[b][match[b] >= 0]
        assert got.size == 2 and len(set(got.tolist())) == 2 and np.all(got < 2)


def _gather_loss(name: str, valid: jnp.ndarray):
    def loss(c):
        match = get_matcher(name)(c, valid)
        picked = jnp.take_along_axis(c, jnp.maximum(match, 0)[:, None, :], axis=1)
        return jnp.sum(picked) + jnp.sum(match.astype(jnp.float32))

    return loss


@pytest.mark.parametrize("name", IN_JIT)
def test_no_gradient_through_matching(name):
    """Differentiating through a matcher traces (lax.while_loop would refuse a gradient)."""
    cost = jnp.ones((2, 6, 3), jnp.float32)
    grad = jax.eval_shape(jax.grad(_gather_loss(name, jnp.ones((2, 3), bool))), cost)
    assert grad.shape == cost.shape


def test_gradient_values_are_the_gather_only():
    cost = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 6, 3)), jnp.float32)
    grad = np.asarray(jax.grad(_gather_loss("greedy", jnp.ones((2, 3), bool)))(cost))
    # the only gradient is the one of the explicit gather, one 1 per matched slot
    assert grad.sum() == pytest.approx(6.0) and set(np.unique(grad)) <= {0.0, 1.0}


def test_registry_all_names():
    assert set(MATCHERS) >= {"hungarian_scipy", "hungarian_jax", "auction", "sinkhorn", "greedy"}
    for name in MATCHERS:
        assert isinstance(get_matcher(name), Matcher)
    assert get_matcher("auction", theta=4, max_rounds=100).theta == 4
    assert get_matcher("sinkhorn", num_iters=10).num_iters == 10
