"""Times the jitted train step of a config on one fixed batch (no input pipeline).

    python benchmarks/step_time.py --config=configs/shapes_vanilla.py [--override field=value ...]

Prints compile time and steady-state ms/step and steps/s; the input pipeline's cost per batch is
printed separately. Use it to see where a config's step time goes before a convergence run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/shapes_vanilla.py")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--override", action="append", default=[], help="field=value")
    args = parser.parse_args()

    import jax
    import numpy as np

    from detr_jax import data, train
    from detr_jax.config_base import apply_override
    from detr_jax.models import build_model

    spec = importlib.util.spec_from_file_location("cfg", args.config)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for text in args.override:
        apply_override(config, text)

    dataset = data.build_dataset(config)
    batches = data.train_batches(
        dataset,
        global_batch_size=config.batch_size,
        start_step=0,
        buckets=config.image_buckets,
        max_boxes=config.max_boxes,
        prefetch=1,
    )
    host_batch = next(batches)
    t = time.perf_counter()
    for _ in range(10):
        next(batches)
    data_ms = (time.perf_counter() - t) / 10 * 1e3

    mesh = train.make_mesh()
    model = build_model(config)
    rng = jax.random.PRNGKey(config.seed)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    state = train.create_train_state(config, model, tx, rng)
    p_train, _, state_sharding, data_sharding = train.make_steps(
        config, model, tx, schedule, mesh, state
    )
    state = jax.device_put(state, state_sharding)
    batch = train.to_global(host_batch, data_sharding)
    t = time.perf_counter()
    state, metrics = p_train(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    for _ in range(5):
        state, metrics = p_train(state, batch)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = p_train(state, batch)
    jax.block_until_ready(metrics)
    step_ms = (time.perf_counter() - t) / args.steps * 1e3
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    print(f"{'config':40s} {'params':>9s} {'compile s':>9s} {'ms/step':>8s} {'steps/s':>8s} "
          f"{'data ms/batch':>13s}")
    name = os.path.basename(args.config) + "".join(f" {o}" for o in args.override)
    print(f"{name:40s} {params:9d} {compile_s:9.1f} {step_ms:8.1f} {1e3 / step_ms:8.2f} "
          f"{data_ms:13.1f}")


if __name__ == "__main__":
    main()
