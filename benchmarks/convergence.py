"""Convergence benchmark on the fixed "standard shapes" dataset (96x96, 1-6 objects, 6 classes).

Trains a from-scratch DETR with `configs/shapes_vanilla.py` (plus overrides) for a number of steps,
evaluating on the held-out set at regular step intervals, and prints AP against wall time:

    python benchmarks/convergence.py --steps=1500 --evals=5 --workdir=/tmp/conv
    python benchmarks/convergence.py --steps=4500 --evals=9 --workdir=/tmp/conv30 \
        --override optim.lr=3e-4

Columns: step, training time (minutes, evaluation excluded), wall time since start (compile and
evaluation included), steps/s, AP, AP50, AP75, APs. Numbers depend on the machine: record them
with the machine and date in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_vanilla.py")
    parser.add_argument("--steps", type=int, default=None, help="total steps (config default)")
    parser.add_argument("--evals", type=int, default=5, help="evaluations during the run")
    parser.add_argument("--workdir", default="/tmp/detr_convergence")
    parser.add_argument("--override", action="append", default=[], help="field=value")
    args = parser.parse_args()

    t0 = time.time()
    import importlib.util

    from absl import logging

    from detr_jax import train
    from detr_jax.config_base import apply_override

    logging.set_verbosity(logging.WARNING)
    spec = importlib.util.spec_from_file_location("cfg", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    if args.steps:
        config.total_steps = args.steps
    config.eval_every = max(config.total_steps // max(args.evals, 1), 1)
    config.checkpoint_every = config.total_steps
    for item in args.override:
        apply_override(config, item)
    shutil.rmtree(args.workdir, ignore_errors=True)
    final = train.train_and_evaluate(config, args.workdir)
    wall = time.time() - t0

    rows, last_train = [], {}
    with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "steps_per_sec" in rec:
                last_train = rec
            if "eval/AP50" in rec:
                rows.append((rec["step"], last_train.get("train_time_s", 0.0), rec["time"],
                             rec["step"] / max(last_train.get("train_time_s", 1e-9), 1e-9), rec))
    print(f"\nconfig={args.config} steps={config.total_steps} batch={config.batch_size} "
          f"overrides={args.override}")
    print("| step | train min | wall min | steps/s | AP | AP50 | AP75 | APs |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for step, train_s, wall_s, sps, r in rows:
        print(f"| {step} | {train_s / 60:.1f} | {(wall_s + (t0 and 0)) / 60:.1f} | {sps:.2f} | "
              f"{r['eval/AP']:.3f} | {r['eval/AP50']:.3f} | {r['eval/AP75']:.3f} | "
              f"{r['eval/APs']:.3f} |")
    print(f"total wall time {wall / 60:.1f} min (process start to end, evaluation included); "
          f"final AP50 {final.get('AP50', float('nan')):.3f}")


if __name__ == "__main__":
    main()
