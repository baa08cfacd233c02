"""Tables for docs/scaling.md: per-device memory of DETR-R50 and how a step grows with image size.

    python benchmarks/scaling.py memory [--size 1333] [--batches 1,2,4] [--variants ...]
    python benchmarks/scaling.py sizes [--model small|r50] [--sizes 128,192,256] [--batch 4]
    python benchmarks/scaling.py flops [--sizes 512,800,1024,1333]

`memory`: compiles (never runs) the real jitted train step of detr_jax.train for DETR-R50 (the
paper's architecture, frozen BN, stem + layer1 frozen) at one square image size and per-device
batch, and prints XLA's `compiled.memory_analysis()`: arguments (state + batch), temporaries
(activations kept for the backward pass and scratch), outputs, and the peak estimate
arguments + temporaries + outputs - aliased (the state is donated). On CPU this is the CPU
compiler's buffer assignment; a TPU or GPU compile lays buffers out differently (tiles, fusion),
so take it as an estimate of the per-device footprint.

`sizes`: times the train step (fixed synthetic batch, steps interleaved round-robin over the
sizes so that a shared machine slows all sizes alike) at several image sizes, with XLA's FLOP
count of each step and the encoder's token count; `flops` prints XLA's forward FLOPs of DETR-R50
at several sizes next to the analytic FLOPs of the encoder's attention (quadratic in tokens).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gpu_r50 import xla_flops, xla_peak_bytes  # noqa: E402 (sibling scripts)
from train_step import NUM_BOXES, host_batch, synthetic_batch  # noqa: E402

GIB = 2**30


def r50_config(size: int, batch: int, overrides: dict | None = None):
    """The paper's DETR-R50 on square `size` images, `batch` per device (one device), with
    `overrides` ({dotted field: value}, e.g. {"model.dtype": "bfloat16"}) applied."""
    from detr_jax.config_base import base_config, set_field

    c = base_config()
    c.num_classes = 91
    c.batch_size = batch
    c.image_buckets = [(size, size)]
    c.max_boxes = NUM_BOXES
    c.model.backbone.mask_features = True
    for k, v in (overrides or {}).items():
        set_field(c, k, v)
    return c


def small_config(size: int, batch: int, overrides: dict | None = None):
    """benchmarks/train_step.py's "small": ResNet-18, 3+3 layers of d=128, 50 queries."""
    c = r50_config(size, batch)
    c.num_classes = 20
    m = c.model
    m.backbone.name, m.hidden_dim = "resnet18", 128
    m.transformer.enc_layers, m.transformer.dec_layers = 3, 3
    m.transformer.dim_feedforward, m.queries.num_queries = 512, 50
    from detr_jax.config_base import set_field

    for k, v in (overrides or {}).items():
        set_field(c, k, v)
    return c


def abstract_batch(config):
    """ShapeDtypeStructs of one global batch (what detr_jax.data.collate produces)."""
    import jax
    import jax.numpy as jnp

    b, (h, w), g = config.batch_size, config.image_buckets[0], config.max_boxes
    s = jax.ShapeDtypeStruct
    return {
        "image": s((b, h, w, 3), jnp.float32),
        "pixel_mask": s((b, h, w), jnp.bool_),
        "labels": s((b, g), jnp.int32),
        "boxes": s((b, g, 4), jnp.float32),
        "box_valid": s((b, g), jnp.bool_),
        "image_valid": s((b,), jnp.bool_),
    }


def compile_train_step(config):
    """(compiled train step, seconds to compile, model, optimiser), compiled with an abstract
    state and batch (no allocation)."""
    import jax

    from detr_jax import train
    from detr_jax.models import build_model

    model = build_model(config)
    rng = jax.random.PRNGKey(0)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    state = jax.eval_shape(lambda r: train.create_train_state(config, model, tx, r), rng)
    p_train, _, _, _ = train.make_steps(config, model, tx, schedule, train.make_mesh(), state)
    t = time.perf_counter()
    compiled = p_train.lower(state, abstract_batch(config)).compile()
    return compiled, time.perf_counter() - t, model, tx


def memory(args) -> None:
    remat_all = {"model.backbone.remat": True, "model.transformer.remat_encoder": True,
                 "model.transformer.remat_decoder": True}
    variants = {
        "fp32": {},
        "bf16": {"model.dtype": "bfloat16"},
        "fp32 remat all": remat_all,
        "bf16 remat all": {"model.dtype": "bfloat16", **remat_all},
    }
    print(f"DETR-R50 train step at {args.size}x{args.size}, per device; XLA CPU "
          "memory_analysis (GiB)")
    print(f"{'variant':16s} {'batch':>5s} {'args':>7s} {'temp':>7s} {'out':>7s} {'alias':>7s} "
          f"{'peak':>7s} {'compile s':>9s}")
    for name in args.variants.split(","):
        for b in (int(x) for x in args.batches.split(",")):
            compiled, secs, _, _ = compile_train_step(
                r50_config(args.size, b, variants[name])
            )
            m, peak = compiled.memory_analysis(), xla_peak_bytes(compiled)
            print(f"{name:16s} {b:5d} {m.argument_size_in_bytes / GIB:7.2f} "
                  f"{m.temp_size_in_bytes / GIB:7.2f} {m.output_size_in_bytes / GIB:7.2f} "
                  f"{m.alias_size_in_bytes / GIB:7.2f} {peak / GIB:7.2f} {secs:9.0f}", flush=True)


def sizes(args) -> None:
    import jax

    from detr_jax import train

    build = small_config if args.model == "small" else r50_config
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        config = build(size, args.batch)
        config.model.backbone.mask_features = False
        compiled, secs, model, tx = compile_train_step(config)
        state = train.create_train_state(config, model, tx, jax.random.PRNGKey(0))
        batch = host_batch(*synthetic_batch(args.batch, (size, size), config.num_classes))
        state, _ = compiled(state, batch)  # warm-up
        tokens = (-(-size // 32)) ** 2
        runs.append(dict(size=size, compiled=compiled, state=state, batch=batch, times=[],
                         flops=xla_flops(compiled), tokens=tokens,
                         compile_s=secs))
    for _ in range(args.repeats):
        for run in runs:
            t = time.perf_counter()
            run["state"], metrics = run["compiled"](run["state"], run["batch"])
            jax.block_until_ready(metrics)
            run["times"].append(time.perf_counter() - t)
    base = runs[0]
    base_ms = 1e3 * statistics.median(base["times"])
    print(f"{args.model} model, train step, batch {args.batch}, median of {args.repeats} "
          "interleaved steps")
    print(f"{'size':>5s} {'tokens':>6s} {'pixels x':>8s} {'ms/step':>8s} {'time x':>7s} "
          f"{'GFLOP/step':>10s} {'FLOP x':>7s} {'GFLOP/s':>8s} {'compile s':>9s}")
    for run in runs:
        ms = 1e3 * statistics.median(run["times"])
        print(f"{run['size']:5d} {run['tokens']:6d} {(run['size'] / base['size']) ** 2:8.2f} "
              f"{ms:8.0f} {ms / base_ms:7.2f} {run['flops'] / 1e9:10.1f} "
              f"{run['flops'] / base['flops']:7.2f} {run['flops'] / ms / 1e6:8.1f} "
              f"{run['compile_s']:9.0f}")


def flops(args) -> None:
    import jax
    import jax.numpy as jnp

    from detr_jax.models import build_model, variable_shapes

    print("DETR-R50 forward, batch 1: XLA cost_analysis FLOPs vs encoder attention (analytic: "
          "6 layers x 2 matmuls x 2*N^2*d)")
    print(f"{'size':>5s} {'tokens N':>8s} {'GFLOP fwd':>9s} {'attn GFLOP':>10s} {'attn %':>6s}")
    for size in (int(s) for s in args.sizes.split(",")):
        config = r50_config(size, 1)
        model = build_model(config)
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        m = jax.ShapeDtypeStruct((1, size, size), jnp.bool_)
        variables = variable_shapes(model, (size, size))
        total = xla_flops(jax.jit(model.apply).lower(variables, x, m).compile())
        n = (-(-size // 32)) ** 2
        attn = 6 * 2 * 2 * n * n * config.model.hidden_dim
        print(f"{size:5d} {n:8d} {total / 1e9:9.1f} {attn / 1e9:10.1f} {100 * attn / total:6.1f}",
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pm = sub.add_parser("memory")
    pm.add_argument("--size", type=int, default=1333)
    pm.add_argument("--batches", default="1,2,4")
    pm.add_argument("--variants", default="fp32,bf16,fp32 remat all,bf16 remat all")
    ps = sub.add_parser("sizes")
    ps.add_argument("--model", choices=("small", "r50"), default="small")
    ps.add_argument("--sizes", default="128,192,256")
    ps.add_argument("--batch", type=int, default=4)
    ps.add_argument("--repeats", type=int, default=7)
    pf = sub.add_parser("flops")
    pf.add_argument("--sizes", default="512,800,1024,1333")
    args = p.parse_args()
    {"memory": memory, "sizes": sizes, "flops": flops}[args.cmd](args)


if __name__ == "__main__":
    main()
