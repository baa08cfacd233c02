"""Deformable DETR-R50's train step: detr_jax vs Hugging Face `DeformableDetrForObjectDetection`
on this machine's CPU, and XLA's cost of our step at COCO size.

    python benchmarks/deformable_train_step.py [--variant plain|refine|two_stage]
        [--image 512 512] [--batch 2] [--repeats 3] [--steps 2] [--spec r50|small] [--json FILE]
    python benchmarks/deformable_train_step.py --flops [--image 800 1333] [--batch 1]

Timing (the default): one random-weight HF Deformable DETR (tests/hf_deformable_reference.py;
ResNet-50, d=256, 6+6 layers, 8 heads, FFN 1024, 4+4 points, 300 queries, 91 labels; dropout,
attention and activation dropout 0.1; auxiliary losses) is converted into detr_jax, and both
train on one synthetic batch (random images, 8 random boxes per image; benchmarks/train_step.py's
`synthetic_batch`) with Deformable DETR's recipe: stem + layer1 frozen, FrozenBatchNorm, scipy
Hungarian matching with the focal cost, AdamW lr 2e-4 with the backbone, sampling offsets and
reference points at x0.1, weight decay 1e-4, clipping at 0.1. detr_jax runs the real jitted
train step of detr_jax.train (train_step.py's `JaxSide`, given the recipe of
detr_jax/config_deformable.py as overrides: focal loss, costs 2/5/2, param_rules); HF trains
with its own loss (labels passed; its focal loss weight is 1, ours 2, and for two-stage it leaves
the proposals' loss out) in PyTorch eager (`TorchSide`, with its AdamW groups replaced by the
recipe's after its two warm-up steps). Blocks of `--steps` steps are interleaved (JAX, HF, HF,
JAX, ...) and the table gives medians over `--repeats` blocks: train steps/s and ms/step,
CPU ms/step, inference images/s (eval forward, every decoder layer's heads), the RSS rise during
one train step, XLA's `memory_analysis()` (arguments + outputs + temporaries - aliased, and the
temporaries alone), compile time (JAX) or first eager step (HF), and the JAX/HF ratios.

`--flops`: no HF and nothing runs. Our train step and our inference (`model.apply`, eval) for the
COCO recipe's model (configs/deformable_coco.py's parts) are lowered and compiled at
`--image` (default 800 x 1333) and `--batch`, and XLA's `cost_analysis()` FLOPs and
`memory_analysis()` bytes are printed (the host-side scipy matching is not counted).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from train_step import NUM_BOXES, JaxSide, TorchSide, host_batch, synthetic_batch  # noqa: E402

SPECS = {
    "r50": dict(
        resnet=dict(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                    layer_type="bottleneck"),
        d_model=256, encoder_layers=6, decoder_layers=6, heads=8, ffn=1024, enc_points=4,
        dec_points=4, num_queries=300, num_labels=91,
    ),
    "small": "SMALL",  # tests/hf_deformable_reference.py's test model, at 128 x 128
}
VARIANTS = {"plain": (False, False), "refine": (True, False), "two_stage": (True, True)}
GIB = 2**30


def recipe_overrides(variant: str, spec: dict) -> list[str]:
    """JaxSide overrides: the loss, matching costs and optimiser of Deformable DETR's recipe
    (config_deformable.deformable_detr, which calls deformable_loss), and what the converter
    cannot read from weights whose heads are not 8 (points) or from a two-stage model (queries)."""
    from detr_jax.config_base import base_config
    from detr_jax.config_deformable import deformable_detr

    c = deformable_detr(base_config(), variant)
    fields = {
        "matcher.costs": c.matcher.costs.to_dict(),
        "loss.terms": c.loss.terms.to_dict(),
        "loss.weights": c.loss.weights.to_dict(),
        "optim.lr": c.optim.lr,
        "optim.param_rules": [list(r) for r in c.optim.param_rules],
        "optim.weight_decay": c.optim.weight_decay,
        "optim.clip_norm": c.optim.clip_norm,
        "model.transformer.enc_points": spec["enc_points"],
        "model.transformer.dec_points": spec["dec_points"],
        "model.queries.num_queries": spec["num_queries"],
    }
    return [f"{k}={json.dumps(v)}" for k, v in fields.items()]


class DeformableTorchSide(TorchSide):
    """TorchSide (HF backbone unfrozen, then stem + stage 0 frozen by hand; one timed first
    step, one step under the RSS sampler) with the recipe's AdamW groups afterwards: lr 2e-4,
    the backbone, sampling offsets and reference points at x0.1 (same parameters, same cost)."""

    def __init__(self, hf_model, data, lr: float = 2e-4):
        super().__init__(hf_model, data)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

        def slow(name: str) -> bool:
            return (name.startswith("model.backbone.") or "sampling_offsets" in name
                    or "reference_points" in name)

        groups = [{"params": [p for n, p in named if not slow(n)]},
                  {"params": [p for n, p in named if slow(n)], "lr": 0.1 * lr}]
        self.opt = self.torch.optim.AdamW(groups, lr=lr, weight_decay=1e-4)


def build_hf(spec: dict, variant: str):
    """build_hf_deformable with dropout, attention and activation dropout 0.1 in its config."""
    from unittest import mock

    import hf_deformable_reference as ref

    config = functools.partial(ref.DeformableDetrConfig, dropout=0.1, attention_dropout=0.1,
                               activation_dropout=0.1)
    with mock.patch.object(ref, "DeformableDetrConfig", config):
        return ref.build_hf_deformable(spec, *VARIANTS[variant])


def timing(args, spec: dict, image: tuple[int, int]) -> None:
    import torch

    torch.set_num_threads(args.threads)
    hf_model = build_hf(spec, args.variant)
    hf_model.config._attn_implementation = args.hf_attn  # read at call time (train_step.py)
    data = synthetic_batch(args.batch, image, spec["num_labels"])
    overrides = recipe_overrides(args.variant, spec) + args.override
    sides = {"detr_jax": JaxSide(hf_model, spec, overrides, data),
             "hf_torch": DeformableTorchSide(hf_model, data)}
    times = {name: {"train": [], "infer": []} for name in sides}
    for r in range(args.repeats):
        for name, side in list(sides.items())[:: 1 if r % 2 == 0 else -1]:
            times[name]["train"].append(side.train(args.steps))
            times[name]["infer"].append(side.inference(args.steps))

    rows = {}
    for name, side in sides.items():
        train_s = statistics.median(t for t, _ in times[name]["train"])
        infer_s = statistics.median(t for t, _ in times[name]["infer"])
        rows[name] = dict(
            train_steps_s=1 / train_s, train_ms=1e3 * train_s,
            train_cpu_ms=1e3 * statistics.median(c for _, c in times[name]["train"]),
            infer_images_s=args.batch / infer_s, rss_mib=side.rss_bytes / 2**20, loss=side.loss,
            block_train_ms=[round(1e3 * t) for t, _ in times[name]["train"]],
        )
    jx, th = sides["detr_jax"], sides["hf_torch"]
    rows["detr_jax"].update(compile_s=jx.compile_s, xla_mib=jx.xla_bytes / 2**20,
                            xla_temp_mib=jx.xla_temp_bytes / 2**20)
    rows["hf_torch"].update(first_step_s=th.first_step_s)
    ratio = {k: rows["detr_jax"][k] / rows["hf_torch"][k]
             for k in ("train_steps_s", "infer_images_s", "train_cpu_ms")}
    print(f"Deformable DETR ({args.variant}, spec {args.spec}): {image[0]}x{image[1]} px, batch "
          f"{args.batch}, {args.repeats} interleaved blocks of {args.steps} steps, torch threads "
          f"{args.threads}, HF attention {args.hf_attn}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'impl':9s} {'train steps/s':>13s} {'ms/step':>8s} {'CPU ms/step':>11s} "
          f"{'infer img/s':>11s} {'peak RSS MiB':>12s} {'XLA MiB':>8s} {'XLA temp MiB':>12s} "
          f"{'compile s':>9s} {'loss':>7s}")
    for name, row in rows.items():
        xla = (f"{row['xla_mib']:8.0f} {row['xla_temp_mib']:12.0f}" if "xla_mib" in row
               else f"{'-':>8s} {'-':>12s}")
        comp = row.get("compile_s", row.get("first_step_s"))
        print(f"{name:9s} {row['train_steps_s']:13.4f} {row['train_ms']:8.0f} "
              f"{row['train_cpu_ms']:11.0f} {row['infer_images_s']:11.2f} "
              f"{row['rss_mib']:12.0f} {xla} {comp:9.1f} {row['loss']:7.2f}")
    print(f"detr_jax / HF: train {ratio['train_steps_s']:.2f}x, inference "
          f"{ratio['infer_images_s']:.2f}x, CPU time per step {ratio['train_cpu_ms']:.2f}x HF's "
          f"(per-block train ms: jax {rows['detr_jax']['block_train_ms']}, "
          f"hf {rows['hf_torch']['block_train_ms']}; HF's compile column is its first step)")
    if args.json:
        record = dict(mode="timing", variant=args.variant, spec=args.spec, image=image,
                      batch=args.batch, repeats=args.repeats, steps=args.steps,
                      threads=args.threads, load=os.getloadavg(), overrides=args.override,
                      ratio=ratio, **rows)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


def flops(args, image: tuple[int, int]) -> None:
    """Lower + compile (never run) our train step and inference; print XLA's cost."""
    import jax
    from gpu_r50 import xla_flops, xla_peak_bytes

    from detr_jax import train
    from detr_jax.config_base import apply_override
    from detr_jax.config_deformable import deformable_detr
    from detr_jax.convert.checkpoint import config_for
    from detr_jax.core.compile_options import step_compiler_options
    from detr_jax.models import build_model

    config = deformable_detr(config_for({  # as configs/deformable_coco.py and the timing side
        "num_classes": 91, "model.backbone.name": "resnet50", "model.hidden_dim": 256,
        "model.backbone.frozen_stages": 2, "model.backbone.mask_features": False,
    }), args.variant)
    config.batch_size, config.image_buckets, config.max_boxes = args.batch, [image], NUM_BOXES
    config.matcher.name = "hungarian_scipy"
    config.loss.aux_loss = True
    for text in args.override:
        apply_override(config, text)
    model = build_model(config)
    rng = jax.random.PRNGKey(0)
    tx, schedule = train.make_optimizer_for(config, model, rng)
    state = jax.eval_shape(lambda r: train.create_train_state(config, model, tx, r), rng)
    p_train, _, state_sharding, data_sharding = train.make_steps(
        config, model, tx, schedule, train.make_mesh(), state)
    if args.time_steps:  # our side alone, random weights: ms/step for the overrides
        real = jax.device_put(train.create_train_state(config, model, tx, rng), state_sharding)
        real_batch = train.to_global(host_batch(*synthetic_batch(
            args.batch, image, config.num_classes)), data_sharding)
        step = p_train.lower(real, real_batch).compile()
        real, _ = step(real, real_batch)
        jax.block_until_ready(real)
        t = time.perf_counter()
        for _ in range(args.time_steps):
            real, metrics = step(real, real_batch)
        float(metrics["loss"])
        ms = 1e3 * (time.perf_counter() - t) / args.time_steps
        print(f"train step {image[0]}x{image[1]} batch {args.batch} overrides {args.override}: "
              f"{ms:.0f} ms/step over {args.time_steps} steps (load average "
              f"{os.getloadavg()[0]:.2f})")
        return
    batch = host_batch(*synthetic_batch(args.batch, image, config.num_classes))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    infer = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m),
                    compiler_options=step_compiler_options(config.xla_cpu_ynnpack))
    rows = {}
    for name, lower in (("train", lambda: p_train.lower(state, batch)),
                        ("inference", lambda: infer.lower(state.params, batch["image"],
                                                          batch["pixel_mask"]))):
        t = time.perf_counter()
        compiled = lower().compile()
        mem = compiled.memory_analysis()
        rows[name] = dict(gflops=xla_flops(compiled) / 1e9, peak_gib=xla_peak_bytes(compiled) / GIB,
                          temp_gib=mem.temp_size_in_bytes / GIB if mem else float("nan"),
                          compile_s=time.perf_counter() - t)
    print(f"Deformable DETR-R50 ({args.variant}) XLA cost at {image[0]}x{image[1]}, batch "
          f"{args.batch} (compiled, not run; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})")
    print(f"{'program':9s} {'GFLOPs':>9s} {'GFLOPs/img':>10s} {'XLA peak GiB':>12s} "
          f"{'temp GiB':>9s} {'compile s':>9s}")
    for name, row in rows.items():
        print(f"{name:9s} {row['gflops']:9.1f} {row['gflops'] / args.batch:10.1f} "
              f"{row['peak_gib']:12.2f} {row['temp_gib']:9.2f} {row['compile_s']:9.1f}")
    if args.json:
        record = dict(mode="flops", variant=args.variant, image=image, batch=args.batch,
                      overrides=args.override, **rows)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=tuple(VARIANTS), default="plain")
    parser.add_argument("--spec", choices=tuple(SPECS), default="r50",
                        help="small: the parity tests' tiny model at 128 x 128 (a smoke test)")
    parser.add_argument("--image", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="default 512 512 (800 1333 with --flops, 128 128 for small)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved blocks per side")
    parser.add_argument("--steps", type=int, default=2, help="steps per block")
    parser.add_argument("--flops", action="store_true", help="XLA cost only (no HF, no run)")
    parser.add_argument("--time-steps", type=int, default=0,
                        help="with --flops: time our train step alone instead (random weights)")
    parser.add_argument("--override", action="append", default=[], help="detr_jax field=value")
    parser.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json", default="", help="append the results as one JSON line here")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    default = (800, 1333) if args.flops else (128, 128) if args.spec == "small" else (512, 512)
    image = tuple(args.image or default)
    if args.flops:
        flops(args, image)
        return
    spec = SPECS[args.spec]
    if isinstance(spec, str):
        import hf_deformable_reference as ref

        spec = getattr(ref, spec)
    timing(args, spec, image)


if __name__ == "__main__":
    main()
