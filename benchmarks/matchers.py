"""Matcher benchmark: time per batch under jit and optimality gap against scipy.

    JAX_PLATFORMS=cpu python benchmarks/matchers.py            # full grid
    JAX_PLATFORMS=cpu python benchmarks/matchers.py --batch 64 --queries 100 --slots 20

For every (B, Q, G) of the grid (B in {8, 64}, Q in {100, 300}, G in {7, 20, 100}) it
draws DETR-like costs (``detr_cost`` on random logits / boxes; image ``b`` has between
``G/2`` and ``G`` real objects, the first image all ``G``) and prints one row per
matcher: the steady-state time per batch (median of repeated calls after a warm-up
compile), the ratio to the scipy host loop, the mean / max relative optimality gap
``(total - optimum) / max(1, |optimum|)`` over images with objects, and the share of
images solved exactly (gap <= 1e-6). Reference rows: ``scipy_host`` (numpy loop over
images calling ``linear_sum_assignment``, no JAX), ``scipy_callback`` (the
``hungarian_scipy`` matcher: one ``pure_callback`` inside jit) and ``optax_vmap``
(``jax.vmap(optax.assignment.hungarian_algorithm)``, invalid columns at cost 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from detr_jax.matching import detr_cost, get_matcher  # noqa: E402
from detr_jax.matching.hungarian_scipy import hungarian_match_numpy  # noqa: E402

MATCHERS = ("hungarian_jax", "auction", "sinkhorn", "greedy")


def make_problem(rng: np.random.Generator, batch: int, num_q: int, num_g: int):
    logits = rng.normal(size=(batch, num_q, 92)).astype(np.float32)
    boxes = np.concatenate(
        [rng.uniform(0.1, 0.9, (batch, num_q, 2)), rng.uniform(0.05, 0.5, (batch, num_q, 2))], -1
    ).astype(np.float32)
    gboxes = np.concatenate(
        [rng.uniform(0.1, 0.9, (batch, num_g, 2)), rng.uniform(0.05, 0.5, (batch, num_g, 2))], -1
    ).astype(np.float32)
    labels = rng.integers(0, 91, (batch, num_g)).astype(np.int32)
    counts = rng.integers((num_g + 1) // 2, num_g + 1, size=batch)
    counts[0] = num_g
    valid = np.arange(num_g)[None, :] < counts[:, None]
    cost = np.asarray(detr_cost(logits, boxes, labels, gboxes, valid))
    return cost, valid


def optax_vmap_matcher(cost: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """vmapped optax Hungarian; invalid columns cost 0 (exact since Q >= G)."""
    cost = jnp.where(valid[:, None, :], cost, 0.0)
    rows, cols = jax.vmap(optax.assignment.hungarian_algorithm)(cost)
    num_g = cost.shape[2]
    b = jnp.arange(cost.shape[0])[:, None]
    match = jnp.full((cost.shape[0], num_g), -1, jnp.int32).at[b, cols].set(rows.astype(jnp.int32))
    return jnp.where(valid, match, -1)


def time_call(fn, *args, min_time: float = 1.0, max_reps: int = 50) -> float:
    """Median seconds per call after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gaps(cost: np.ndarray, valid: np.ndarray, match: np.ndarray, best: np.ndarray):
    got = np.array(
        [cost[b, match[b, valid[b]], np.flatnonzero(valid[b])].sum() for b in range(len(cost))]
    )
    rel = (got - best) / np.maximum(1.0, np.abs(best))
    rel = rel[valid.any(axis=1)]
    return float(rel.mean()), float(rel.max()), float(np.mean(rel <= 1e-6))


def run(batch: int, num_q: int, num_g: int, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    cost, valid = make_problem(rng, batch, num_q, num_g)
    ref = hungarian_match_numpy(cost, valid)
    c64 = cost.astype(np.float64)
    best = np.array(
        [c64[b, ref[b, valid[b]], np.flatnonzero(valid[b])].sum() for b in range(batch)]
    )
    jc, jv = jnp.asarray(cost), jnp.asarray(valid)
    rows = []
    host = time_call(hungarian_match_numpy, cost, valid)
    rows.append(("scipy_host", host, ref))
    callback = jax.jit(get_matcher("hungarian_scipy"))
    rows.append(("scipy_callback", time_call(callback, jc, jv), np.asarray(callback(jc, jv))))
    for name in (*MATCHERS, "optax_vmap"):
        fn = jax.jit(optax_vmap_matcher if name == "optax_vmap" else get_matcher(name))
        min_time = 0.3 if name in ("optax_vmap", "auction", "greedy") else 1.0
        seconds = time_call(fn, jc, jv, min_time=min_time)
        rows.append((name, seconds, np.asarray(fn(jc, jv))))
    return [(name, s, s / host, *gaps(c64, valid, m, best)) for name, s, m in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="*", default=[8, 64])
    parser.add_argument("--queries", type=int, nargs="*", default=[100, 300])
    parser.add_argument("--slots", type=int, nargs="*", default=[7, 20, 100])
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs")
    header = (
        f"{'B':>3} {'Q':>4} {'G':>4} {'matcher':<15} {'ms/batch':>10} {'x host':>8} "
        f"{'gap mean':>9} {'gap max':>9} {'exact':>6}"
    )
    print(header)
    print("-" * len(header))
    for batch in args.batch:
        for num_q in args.queries:
            for num_g in args.slots:
                for name, sec, ratio, gmean, gmax, exact in run(batch, num_q, num_g):
                    print(
                        f"{batch:>3} {num_q:>4} {num_g:>4} {name:<15} {sec * 1e3:>10.2f} "
                        f"{ratio:>8.2f} {gmean:>9.2e} {gmax:>9.2e} {exact:>6.0%}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
