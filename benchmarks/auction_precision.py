"""Auction on float costs: measured gap against the quantisation bound, per cost family.

    JAX_PLATFORMS=cpu python benchmarks/auction_precision.py --batch 16 --queries 100 --slots 20

The auction (``detr_jax/matching/auction.py``) rounds each image's costs to integers on a
grid of ``unit = span * (Q + 1) / 2**27`` (``span`` = max - min of the image's valid
entries after ``sanitize``), so its total is within ``(n + 1) * unit`` of the optimum
(``n`` valid slots). This script prints, per family, the median unit, the median bound, and
the measured gap ``total - optimum`` (float64 totals of the float32 cost the matchers see;
optimum from scipy) of ``auction`` and, for comparison, of ``hungarian_jax`` and
``sinkhorn`` (max over images). ``in bound`` is False where the auction exceeded the
bound, i.e. ran out of ``--max-rounds`` (a greedy completion answers; no bound then):

* ``detr``: ``detr_cost`` of random logits / boxes (as ``benchmarks/matchers.py``);
* ``detr+inf``: the same with one ``+inf`` entry per image (``sanitize`` turns it into
  ``hi + (n + 1) * (span + 1)``, which stretches the span, hence the unit, by about
  ``n + 2`` times);
* ``detr+outlier``: one finite entry of ``1e4`` per image (a diverged box);
* ``dup``, ``dup+inf``, ``dup+outlier``: as above, with the second half of the queries
  near-duplicates (1e-5 jitter) of the first half: near-ties between queries;
* ``near_ties``: integer costs 0..3 plus noise of ``1e-6``: distinct floats whose
  differences lie below the unit (the auction sees ties; scipy does not);
* ``offset_1e3``: ``detr`` plus 1000 (float32 spacing at 1e3 is 6e-5: the input itself
  resolves no finer; every solver sees the same rounded matrix).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from detr_jax.matching import detr_cost, get_matcher  # noqa: E402
from detr_jax.matching._common import sanitize  # noqa: E402
from detr_jax.matching.auction import to_int_costs  # noqa: E402
from detr_jax.matching.hungarian_scipy import hungarian_match_numpy  # noqa: E402

FAMILIES = (
    "detr", "detr+inf", "detr+outlier", "dup", "dup+inf", "dup+outlier", "near_ties", "offset_1e3"
)  # fmt: skip


def detr_problem(rng: np.random.Generator, batch: int, num_q: int, num_g: int, dup: bool):
    """DETR-like costs [B, Q, G] float32 and valid [B, G] (G/2..G objects per image).

    With ``dup``, the second half of the queries repeats the first half up to a jitter of
    1e-5 in logits and box coordinates (the near-duplicate predictions of a trained DETR).
    """
    logits = rng.normal(size=(batch, num_q, 92)).astype(np.float32)

    def boxes(n):
        centre = rng.uniform(0.1, 0.9, (batch, n, 2))
        return np.concatenate([centre, rng.uniform(0.05, 0.5, (batch, n, 2))], -1)

    labels = rng.integers(0, 91, (batch, num_g)).astype(np.int32)
    counts = rng.integers((num_g + 1) // 2, num_g + 1, size=batch)
    valid = np.arange(num_g)[None, :] < counts[:, None]
    pred, gt = boxes(num_q).astype(np.float32), boxes(num_g).astype(np.float32)
    if dup:
        half = num_q // 2
        jitter = lambda x: x[:, :half] + 1e-5 * rng.uniform(-1, 1, x[:, :half].shape)
        logits[:, half : 2 * half] = jitter(logits)
        pred[:, half : 2 * half] = jitter(pred)
    return np.asarray(detr_cost(logits, pred, labels, gt, valid)), valid


def family_problem(family: str, rng: np.random.Generator, batch: int, num_q: int, num_g: int):
    """Costs of ``family`` after ``sanitize`` (what every matcher solves), and valid."""
    cost, valid = detr_problem(rng, batch, num_q, num_g, dup=family.startswith("dup"))
    cost = cost.copy()
    rows = np.arange(batch)
    q = rng.integers(0, num_q, batch)
    g = np.array([rng.choice(np.flatnonzero(v)) for v in valid])
    if family.endswith("+inf"):
        cost[rows, q, g] = np.inf
    elif family.endswith("+outlier"):
        cost[rows, q, g] = 1e4
    elif family == "near_ties":
        ints = rng.integers(0, 4, cost.shape).astype(np.float64)
        cost = (ints + 1e-6 * rng.uniform(size=cost.shape)).astype(np.float32)
    elif family == "offset_1e3":
        cost = cost + np.float32(1000.0)
    return np.asarray(sanitize(jnp.asarray(cost), jnp.asarray(valid))), valid


def totals(cost: np.ndarray, valid: np.ndarray, match: np.ndarray) -> np.ndarray:
    c64 = cost.astype(np.float64)
    picked = [c64[b, match[b, valid[b]], np.flatnonzero(valid[b])] for b in range(len(cost))]
    return np.array([p.sum() for p in picked])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-rounds", type=int, default=20000, help="auction max_rounds")
    args = parser.parse_args()
    batch, num_q, num_g = args.batch, args.queries, args.slots
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, B={batch} Q={num_q} G={num_g}")
    print(f"auction max_rounds={args.max_rounds}; gaps are absolute (cost units)")
    matchers = {
        "auction": jax.jit(get_matcher("auction", max_rounds=args.max_rounds)),
        "hungarian_jax": jax.jit(get_matcher("hungarian_jax")),
        "sinkhorn": jax.jit(get_matcher("sinkhorn")),
    }
    print(
        f"{'family':<13} {'unit':>9} {'bound':>9} {'auction gap max':>15} {'exact':>6} "
        f"{'rel. to span':>12} {'in bound':>8} {'hungarian_jax':>13} {'sinkhorn':>9}"
    )
    rng = np.random.default_rng(args.seed)
    for family in FAMILIES:
        cost, valid = family_problem(family, rng, batch, num_q, num_g)
        best = totals(cost, valid, hungarian_match_numpy(cost, valid))
        _, unit = to_int_costs(jnp.asarray(cost), jnp.asarray(valid))
        unit = np.asarray(unit, np.float64)
        span = np.array([np.ptp(cost[b][:, valid[b]]) for b in range(batch)])
        bound = (valid.sum(1) + 1) * unit
        gap = {
            name: totals(cost, valid, np.asarray(fn(cost, valid))) - best
            for name, fn in matchers.items()
        }
        a = gap["auction"]
        within = np.all(a <= bound * (1 + 1e-6))
        print(
            f"{family:<13} {np.median(unit):>9.2e} {np.median(bound):>9.2e} {a.max():>15.2e} "
            f"{np.mean(a <= 1e-9 * np.maximum(1, np.abs(best))):>6.0%} "
            f"{(a / span).max():>12.2e} {str(within):>8} {gap['hungarian_jax'].max():>13.2e} "
            f"{gap['sinkhorn'].max():>9.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
