"""Tests for the matching package: scipy Hungarian matcher, DETR cost, helpers, registry."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.matching import (
    MATCHERS,
    HungarianScipyMatcher,
    Matcher,
    detr_cost,
    get_matcher,
    match_to_query_targets,
    matcher_settings,
    unmatched_query_mask,
)


def brute_force_min_cost(cost: np.ndarray, valid: np.ndarray) -> float:
    """Minimum total cost over all injective maps valid-GT -> queries (itertools)."""
    cols = np.flatnonzero(valid)
    if cols.size == 0:
        return 0.0
    num_q = cost.shape[0]
    return min(
        sum(cost[q, g] for q, g in zip(perm, cols, strict=True))
        for perm in itertools.permutations(range(num_q), cols.size)
    )


def assert_valid_assignment(match: np.ndarray, valid: np.ndarray, num_q: int) -> None:
    assert match.dtype == np.int32
    for b in range(match.shape[0]):
        np.testing.assert_array_equal(match[b][~valid[b]], -1)
        assigned = match[b][valid[b]]
        assert np.all((assigned >= 0) & (assigned < num_q))
        assert len(set(assigned.tolist())) == assigned.size


def random_problem(rng, batch, num_q, num_g):
    cost = rng.normal(size=(batch, num_q, num_g)).astype(np.float32)
    n_valid = rng.integers(0, min(num_g, num_q) + 1, size=batch)
    n_valid[0] = 0  # always include a zero-object image
    valid = np.zeros((batch, num_g), bool)
    for b in range(batch):
        # valid slots need not be a prefix: scatter them
        valid[b, rng.choice(num_g, n_valid[b], replace=False)] = True
    return cost, valid


@pytest.fixture(scope="module")
def jit_matcher():
    matcher = HungarianScipyMatcher()
    return matcher, jax.jit(matcher)


@pytest.mark.parametrize("seed", range(6))
def test_scipy_matcher_equals_brute_force(seed, jit_matcher):
    matcher, jitted = jit_matcher
    rng = np.random.default_rng(seed)
    num_q = int(rng.integers(1, 7))
    num_g = int(rng.integers(1, min(num_q, 4) + 1))
    cost, valid = random_problem(rng, batch=4, num_q=num_q, num_g=num_g)
    match = np.asarray(matcher(jnp.asarray(cost), jnp.asarray(valid)))
    assert match.shape == (4, num_g)
    assert_valid_assignment(match, valid, num_q)
    for b in range(4):
        got = sum(cost[b, match[b, g], g] for g in np.flatnonzero(valid[b]))
        np.testing.assert_allclose(got, brute_force_min_cost(cost[b], valid[b]), rtol=1e-5)
    # identical result under jit
    np.testing.assert_array_equal(np.asarray(jitted(cost, valid)), match)


def test_scipy_matcher_under_vmap():
    rng = np.random.default_rng(42)
    costs, valids = zip(*(random_problem(rng, 3, 5, 3) for _ in range(2)), strict=True)
    cost = jnp.asarray(np.stack(costs))  # [V=2, B=3, Q=5, G=3]
    valid = jnp.asarray(np.stack(valids))
    matcher = HungarianScipyMatcher()
    batched = np.asarray(jax.jit(jax.vmap(matcher))(cost, valid))
    assert batched.shape == (2, 3, 3)
    for v in range(2):
        np.testing.assert_array_equal(batched[v], np.asarray(matcher(cost[v], valid[v])))
    # unbatched gt_valid shared across the vmapped axis
    shared = np.asarray(jax.vmap(matcher, in_axes=(0, None))(cost, valid[0]))
    for v in range(2):
        np.testing.assert_array_equal(shared[v], np.asarray(matcher(cost[v], valid[0])))


def test_zero_object_batch_all_minus_one():
    match = np.asarray(HungarianScipyMatcher()(jnp.zeros((2, 4, 3)), jnp.zeros((2, 3), bool)))
    np.testing.assert_array_equal(match, -1)


def test_non_finite_costs_give_valid_assignment():
    rng = np.random.default_rng(3)
    cost = rng.normal(size=(3, 5, 4)).astype(np.float32)
    cost[0, :, :] = np.nan
    cost[1, 0, 1] = np.inf
    cost[1, 2, :] = -np.inf
    cost[2, 1, 2] = np.nan
    valid = np.ones((3, 4), bool)
    match = np.asarray(jax.jit(HungarianScipyMatcher())(cost, valid))
    assert_valid_assignment(match, valid, 5)
    # finite entries still drive the solution where possible: +inf / NaN entries avoided
    assert match[1, 1] != 0 and match[2, 2] != 1


def test_detr_cost_against_numpy():
    rng = np.random.default_rng(7)
    batch, num_q, num_g, num_classes = 2, 5, 3, 4
    logits = rng.normal(size=(batch, num_q, num_classes + 1)).astype(np.float32)
    pred = rng.uniform(0.2, 0.6, size=(batch, num_q, 4)).astype(np.float32)
    gt = rng.uniform(0.2, 0.6, size=(batch, num_g, 4)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(batch, num_g)).astype(np.int32)
    valid = np.array([[True, True, False], [True, False, True]])
    got = np.asarray(detr_cost(logits, pred, labels, gt, valid, 1.5, 4.0, 3.0))
    assert got.dtype == np.float32 and got.shape == (batch, num_q, num_g)

    def xyxy(c):
        cx, cy, w, h = c
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)

    expected = np.zeros((batch, num_q, num_g))
    for b in range(batch):
        prob = np.exp(logits[b].astype(np.float64))
        prob /= prob.sum(-1, keepdims=True)
        for q in range(num_q):
            for g in range(num_g):
                if not valid[b, g]:
                    continue
                p, t = xyxy(pred[b, q]), xyxy(gt[b, g])
                iw = max(min(p[2], t[2]) - max(p[0], t[0]), 0.0)
                ih = max(min(p[3], t[3]) - max(p[1], t[1]), 0.0)
                inter = iw * ih
                union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
                enclose = (max(p[2], t[2]) - min(p[0], t[0])) * (max(p[3], t[3]) - min(p[1], t[1]))
                giou = inter / union - (enclose - union) / enclose
                l1 = np.abs(pred[b, q] - gt[b, g]).sum()
                expected[b, q, g] = -1.5 * prob[q, labels[b, g]] + 4.0 * l1 - 3.0 * giou
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_detr_cost_non_finite_and_no_gradient():
    logits = jnp.array([[[jnp.nan, 0.0, 1.0], [0.0, 1.0, 2.0]]])  # [1, 2, 3]
    boxes = jnp.array([[[0.5, 0.5, 0.2, 0.2], [jnp.inf, 0.5, 0.2, 0.2]]])
    labels = jnp.array([[0, 1]], jnp.int32)
    gt = jnp.array([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    valid = jnp.array([[True, True]])
    cost = np.asarray(detr_cost(logits, boxes, labels, gt, valid))
    assert np.all(np.isfinite(cost))
    grad = jax.grad(lambda x: jnp.sum(detr_cost(x, boxes, labels, gt, valid)))(logits)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_unmatched_mask_and_query_targets():
    match = jnp.array([[2, -1, 0], [-1, -1, -1]], jnp.int32)
    valid = jnp.array([[True, False, True], [False, False, False]])
    mask = np.asarray(unmatched_query_mask(match, 4))
    np.testing.assert_array_equal(mask, [[False, True, False, True], [True] * 4])
    labels = jnp.array([[5, 6, 7], [1, 1, 1]], jnp.int32)
    boxes = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)
    cls, tb, matched = match_to_query_targets(match, labels, boxes, valid, 4, 9)
    np.testing.assert_array_equal(np.asarray(cls), [[7, 9, 5, 9], [9, 9, 9, 9]])
    np.testing.assert_array_equal(np.asarray(matched), ~mask)
    np.testing.assert_array_equal(np.asarray(tb)[0, 2], np.asarray(boxes)[0, 0])
    np.testing.assert_array_equal(np.asarray(tb)[0, 0], np.asarray(boxes)[0, 2])
    np.testing.assert_array_equal(np.asarray(tb)[1], 0.0)


def test_registry():
    assert set(MATCHERS) >= {"hungarian_scipy"}
    m = get_matcher("hungarian_scipy")
    assert isinstance(m, HungarianScipyMatcher) and isinstance(m, Matcher)
    with pytest.raises(ValueError, match="hungarian_scipy"):
        get_matcher("does_not_exist")


def test_matcher_settings():
    assert matcher_settings("auction") == ("theta", "max_rounds")
    assert matcher_settings("sinkhorn") == (
        "num_iters", "eps_start", "eps_end", "round_eps", "round_max_rounds"
    )  # fmt: skip
    for name in ("hungarian_scipy", "hungarian_jax", "greedy"):
        assert matcher_settings(name) == ()
    for name in MATCHERS:  # every setting is documented in the class docstring
        for field in matcher_settings(name):
            assert field in MATCHERS[name].__doc__, (name, field)
    m = get_matcher("sinkhorn", num_iters=10, round_eps=2e-3)
    assert (m.num_iters, m.round_eps, m.eps_end) == (10, 2e-3, 2e-3)
    with pytest.raises(ValueError, match="unknown matcher 'nope'"):
        matcher_settings("nope")


@pytest.mark.parametrize(
    "name, settings, match",
    [
        ("auction", {"eps": 0.1}, r"^matcher 'auction' has no setting matcher\.eps; "
         r"accepted: matcher\.theta, matcher\.max_rounds$"),
        ("hungarian_scipy", {"theta": 2}, r"'hungarian_scipy' has no setting matcher\.theta; "
         r"accepted: none$"),
        ("greedy", {"b": 1, "a": 2}, r"no setting matcher\.a, matcher\.b;"),
        ("auction", {"theta": 1}, r"'auction': matcher\.theta=1 must be an integer >= 2"),
        ("auction", {"max_rounds": 2.5}, r"matcher\.max_rounds=2\.5 must be an integer"),
        ("sinkhorn", {"eps_end": 0.0}, r"'sinkhorn': matcher\.eps_end=0\.0 must be a number > 0"),
        ("sinkhorn", {"num_iters": True}, r"matcher\.num_iters=True must be an integer"),
    ],
)  # fmt: skip
def test_bad_matcher_settings_raise_one_line(name, settings, match):
    with pytest.raises(ValueError, match=match) as info:
        get_matcher(name, **settings)
    assert "\n" not in str(info.value)
