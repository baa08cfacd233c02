"""Compares the training curves of two runs (their workdirs' metrics.jsonl) step by step.

    python -m detr_jax.main --config=configs/shapes_vanilla.py --workdir=A \\
        --config.total_steps=200 \\
        --config.log_every=1      # once on each commit
    python benchmarks/compare_curves.py A/metrics.jsonl B/metrics.jsonl [--every 20]

Prints the largest relative difference of each logged loss over the common steps and a table of
the total loss of both runs (docs/benchmarks.md, "Refactor check").
"""

from __future__ import annotations

import argparse
import json

KEYS = ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_dense", "grad_norm")


def load(path: str) -> dict[int, dict]:
    """{step: record} of the training records (those with a `loss`) of a metrics.jsonl."""
    out = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r and "step" in r:
                out[int(r["step"])] = r
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--every", type=int, default=20)
    args = p.parse_args()
    a, b = load(args.a), load(args.b)
    steps = sorted(set(a) & set(b))
    keys = [k for k in KEYS if all(k in a[s] and k in b[s] for s in steps)]
    print(f"{len(steps)} common steps")
    for k in keys:
        worst = max(abs(a[s][k] - b[s][k]) / max(abs(a[s][k]), 1e-12) for s in steps)
        print(f"  {k:12s} max relative difference {worst:.3e}")
    print("| step | loss (A) | loss (B) |\n|---|---|---|")
    for s in steps:
        if s == 1 or s % args.every == 0:
            print(f"| {s} | {a[s]['loss']:.6f} | {b[s]['loss']:.6f} |")


if __name__ == "__main__":
    main()
