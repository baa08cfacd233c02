"""detr_jax vs Hugging Face `DetrForObjectDetection` (PyTorch eager) on this machine's CPU.

    python benchmarks/train_step.py --config=small [--repeats 5] [--override model.x=y ...]
        [--xla-flags="--xla_cpu_..."] [--hf-attn sdpa|eager]

Both models get the same architecture and the same (random) weights: the HF model is built by
tests/hf_reference.py and converted with detr_jax.convert. Both train like DETR: backbone stem and
layer1 frozen (HF's own freeze filter would freeze its whole native ResNet, so its backbone is
unfrozen and then stem + stage 1 frozen by hand), FrozenBatchNorm everywhere, dropout 0.1 on
attention weights, FFN activations and residuals, auxiliary losses on every decoder layer, the
Hungarian matcher in scipy on the host, AdamW (backbone lr x 0.1) after global-norm clipping at
0.1. One fixed synthetic batch (random images, 8 random boxes per image) is reused.

Measurements are interleaved (JAX block, HF block, HF block, JAX block, ...) so that both see the
same machine load; the table reports medians over `--repeats` blocks of `--steps` steps.
`--variant NAME:field=value[,field=value]` adds further detr_jax sides to the same interleaving
(e.g. `--variant ynnpack:xla_cpu_ynnpack=true`): this VM's speed drifts between processes, so
options are best compared within one run. Reported:
- train steps/s (the full step: forward, loss with matching, backward, optimiser),
- inference images/s (eval forward of the batch, every decoder layer's heads),
- peak memory: the RSS rise during one train step (sampled every ~1 ms, both frameworks) and, for
  JAX, XLA's `compiled.memory_analysis()` (arguments + outputs + temporaries - aliased),
- compile time (JAX lower + compile of the train step) and the first eager step (HF).
Set XLA flags with `--xla-flags`: they must be in the environment before jax is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

CONFIGS = {
    # ResNet-18 (basic blocks, width 64), 3+3 layers of d=128: a shapes-sized detector.
    "small": dict(
        spec=dict(
            resnet=dict(
                embedding_size=64,
                hidden_sizes=[64, 128, 256, 512],
                depths=[2, 2, 2, 2],
                layer_type="basic",
            ),
            d_model=128,
            encoder_layers=3,
            decoder_layers=3,
            heads=8,
            ffn=512,
            num_queries=50,
            num_labels=20,
        ),
        image=(128, 128),
        batch=16,
    ),
    # DETR-R50 as in the paper (6+6 layers, d=256, 100 queries, 91 classes) at a CPU-sized image.
    "r50": dict(spec="R50", image=(384, 384), batch=2),
}
NUM_BOXES = 8


class PeakRSS:
    """Samples this process's resident set size in a thread; `peak - base` in bytes."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta(self) -> int:
        return self.peak - self.base


def synthetic_batch(batch: int, image: tuple[int, int], num_labels: int, seed: int = 0):
    """NHWC float32 images [B,H,W,3], all-real pixel_mask [B,H,W], labels [B,G], boxes [B,G,4]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = image
    images = rng.normal(size=(batch, h, w, 3)).astype(np.float32)
    mask = np.ones((batch, h, w), bool)
    labels = rng.integers(0, num_labels, (batch, NUM_BOXES)).astype(np.int32)
    centre = rng.uniform(0.25, 0.75, (batch, NUM_BOXES, 2))
    size = rng.uniform(0.05, 0.4, (batch, NUM_BOXES, 2))
    boxes = np.concatenate([centre, size], -1).astype(np.float32)
    return images, mask, labels, boxes


def host_batch(images, mask, labels, boxes) -> dict:
    """`synthetic_batch`'s arrays as the train step's batch dict (every box and image valid)."""
    import numpy as np

    return {
        "image": images,
        "pixel_mask": mask,
        "labels": labels,
        "boxes": boxes,
        "box_valid": np.ones(labels.shape, bool),
        "image_valid": np.ones(labels.shape[:1], bool),
    }


class JaxSide:
    """detr_jax: the real train step of detr_jax.train (jitted, state donated)."""

    def __init__(self, hf_model, spec, overrides, data):
        import flax
        import hf_reference as ref
        import jax
        import numpy as np
        from gpu_r50 import xla_peak_bytes

        from detr_jax import train
        from detr_jax.config_base import apply_override
        from detr_jax.convert import convert_state_dict
        from detr_jax.convert.checkpoint import config_for
        from detr_jax.core.compile_options import step_compiler_options
        from detr_jax.models import build_model

        self.jax = jax
        images, mask, labels, boxes = data
        params, fields = convert_state_dict(ref.state_dict_numpy(hf_model), "hf")
        config = config_for({
            **fields,
            "model.transformer.nheads": spec["heads"],
            # As HF: the mask is only resized for attention.
            "model.backbone.mask_features": False,
            "model.transformer.dropout": 0.1,
            "model.backbone.frozen_stages": 2,
        })
        config.batch_size = images.shape[0]
        config.image_buckets = [images.shape[1:3]]
        config.max_boxes = NUM_BOXES
        config.matcher.name = "hungarian_scipy"
        config.loss.aux_loss = True
        for text in overrides:
            apply_override(config, text)
        self.config = config
        model = build_model(config)
        rng = jax.random.PRNGKey(0)
        tx, schedule = train.make_optimizer_for(config, model, rng)
        state = train.create_train_state(config, model, tx, rng)
        params = jax.tree.map(
            np.asarray, flax.traverse_util.unflatten_dict(params, sep="/")
        )
        state = state.replace(params=params, opt_state=tx.init(params))
        mesh = train.make_mesh()
        p_train, _, state_sharding, data_sharding = train.make_steps(
            config, model, tx, schedule, mesh, state
        )
        self.state = jax.device_put(state, state_sharding)
        self.batch = train.to_global(host_batch(images, mask, labels, boxes), data_sharding)
        t = time.perf_counter()
        self.step = p_train.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - t
        self.xla_bytes = xla_peak_bytes(self.step)
        mem = self.step.memory_analysis()
        self.xla_temp_bytes = mem.temp_size_in_bytes if mem is not None else float("nan")
        self.infer = jax.jit(
            lambda p, x, m: model.apply({"params": p}, x, m),
            compiler_options=step_compiler_options(config.xla_cpu_ynnpack),
        )
        self.images, self.mask = self.batch["image"], self.batch["pixel_mask"]
        jax.block_until_ready(self.infer(self.state.params, self.images, self.mask))
        with PeakRSS() as peak:
            self.train(1)
        self.rss_bytes = peak.delta

    def train(self, steps: int) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        self.loss = float(metrics["loss"])
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps

    def inference(self, steps: int) -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out = self.infer(self.state.params, self.images, self.mask)
        self.jax.block_until_ready(out)
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


class TorchSide:
    """HF DetrForObjectDetection in PyTorch eager, trained with its own loss and matcher."""

    def __init__(self, hf_model, data, backbone_lr_mult: float = 0.1):
        import torch

        self.torch = torch
        images, mask, labels, boxes = data
        self.model = hf_model.train()
        backbone = self.model.model.backbone.model  # DetrConvEncoder.model: HF ResNetBackbone
        backbone.requires_grad_(True)  # HF's name filter froze all of its native ResNet
        for module in (backbone.embedder, backbone.encoder.stages[0]):  # = frozen_stages 2
            module.requires_grad_(False)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not n.startswith("model.backbone.")]},
            {"params": [p for n, p in named if n.startswith("model.backbone.")],
             "lr": 1e-4 * backbone_lr_mult},
        ]
        self.params = [p for _, p in named]
        self.opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)
        self.pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.mask = torch.from_numpy(mask).long()
        self.labels = [
            {"class_labels": torch.from_numpy(labels[i]).long(),
             "boxes": torch.from_numpy(boxes[i])}
            for i in range(labels.shape[0])
        ]
        t = time.perf_counter()
        self.train(1)
        self.first_step_s = time.perf_counter() - t
        with PeakRSS() as peak:
            self.train(1)
        self.rss_bytes = peak.delta

    def train(self, steps: int) -> tuple[float, float]:
        self.model.train()
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out = self.model(pixel_values=self.pixels, pixel_mask=self.mask, labels=self.labels)
            self.opt.zero_grad(set_to_none=True)
            out.loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.params, 0.1)
            self.opt.step()
        self.loss = float(out.loss.detach())
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps

    def inference(self, steps: int) -> tuple[float, float]:
        self.model.eval()
        t, c = time.perf_counter(), time.process_time()
        with self.torch.inference_mode():
            for _ in range(steps):
                self.model(pixel_values=self.pixels, pixel_mask=self.mask)
        return (time.perf_counter() - t) / steps, (time.process_time() - c) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=tuple(CONFIGS), default="small")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved blocks per side")
    parser.add_argument("--steps", type=int, default=0, help="steps per block (0: by config)")
    parser.add_argument("--override", action="append", default=[], help="detr_jax field=value")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:field=value[,field=value]: one more detr_jax side")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
    parser.add_argument("--hf-attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--omp-wait", default="", help="OMP_WAIT_POLICY for torch (PASSIVE: "
                        "no spinning, much faster on a shared CPU)")
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--json", default="", help="append the results as one JSON line here")
    args = parser.parse_args()
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.omp_wait:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait  # read when torch starts OpenMP

    import hf_reference as ref
    import torch

    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    spec = ref.R50 if cfg["spec"] == "R50" else cfg["spec"]
    steps = args.steps or (3 if args.config == "small" else 2)
    hf_model = ref.build_hf_detr(
        spec,
        attention_dropout=0.1,
        activation_dropout=0.1,
        dropout=0.1,
    )
    # DETR's attention modules read this at call time; set after construction because an
    # "sdpa" request at construction is refused by HF's ResNet backbone (it has no attention).
    hf_model.config._attn_implementation = args.hf_attn
    hf_model.config.auxiliary_loss = True
    data = synthetic_batch(cfg["batch"], cfg["image"], spec["num_labels"])

    jax_sides = {"detr_jax": JaxSide(hf_model, spec, args.override, data)}
    for text in args.variant:
        name, _, fields = text.partition(":")
        extra = [f for f in fields.split(",") if f]
        jax_sides[name] = JaxSide(hf_model, spec, args.override + extra, data)
    th = None if args.skip_hf else TorchSide(hf_model, data)
    sides = dict(jax_sides) if th is None else {**jax_sides, "hf_torch": th}
    times = {name: {"train": [], "infer": []} for name in sides}
    for r in range(args.repeats):
        order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]
        for name, side in order:
            times[name]["train"].append(side.train(steps))
            times[name]["infer"].append(side.inference(steps))

    rows = {}
    for name, side in sides.items():
        train_s = statistics.median(t for t, _ in times[name]["train"])
        infer_s = statistics.median(t for t, _ in times[name]["infer"])
        rows[name] = dict(
            train_steps_s=1 / train_s,
            train_ms=1e3 * train_s,
            train_cpu_ms=1e3 * statistics.median(c for _, c in times[name]["train"]),
            infer_cpu_ms_per_image=1e3 * statistics.median(c for _, c in times[name]["infer"])
            / cfg["batch"],
            infer_images_s=cfg["batch"] / infer_s,
            rss_mib=side.rss_bytes / 2**20,
            loss=side.loss,
        )
    for name, jx in jax_sides.items():
        rows[name].update(compile_s=jx.compile_s, xla_mib=jx.xla_bytes / 2**20,
                          xla_temp_mib=jx.xla_temp_bytes / 2**20)
    if th is not None:
        rows["hf_torch"].update(first_step_s=th.first_step_s)
    h, w = cfg["image"]
    print(f"config {args.config}: {h}x{w} px, batch {cfg['batch']}, {args.repeats} interleaved "
          f"blocks of {steps} steps, torch threads {args.threads}, HF attention {args.hf_attn}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')!r}, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"overrides {args.override}  variants {args.variant}  "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{'impl':14s} {'train steps/s':>13s} {'ms/step':>8s} {'CPU ms/step':>11s} "
          f"{'infer img/s':>11s} {'peak RSS MiB':>12s} {'XLA MiB':>8s} {'compile s':>9s}")
    for name, row in rows.items():
        xla = f"{row['xla_mib']:8.0f}" if "xla_mib" in row else f"{'-':>8s}"
        comp = row.get("compile_s", row.get("first_step_s", float("nan")))
        print(f"{name:14s} {row['train_steps_s']:13.3f} {row['train_ms']:8.1f} "
              f"{row['train_cpu_ms']:11.0f} {row['infer_images_s']:11.1f} "
              f"{row['rss_mib']:12.0f} {xla} {comp:9.1f}")
    if th is not None:
        hf = rows["hf_torch"]
        print(f"per-block train ms: hf {[round(1e3 * t) for t, _ in times['hf_torch']['train']]}")
        for name in jax_sides:
            row = rows[name]
            row["train_ratio"] = row["train_steps_s"] / hf["train_steps_s"]
            row["infer_ratio"] = row["infer_images_s"] / hf["infer_images_s"]
            print(f"{name} / HF: train {row['train_ratio']:.2f}x, inference "
                  f"{row['infer_ratio']:.2f}x, CPU time per step "
                  f"{row['train_cpu_ms'] / hf['train_cpu_ms']:.2f}x HF's (per-block train ms: "
                  f"{[round(1e3 * t) for t, _ in times[name]['train']]})")
        rows["train_ratio"] = rows["detr_jax"]["train_ratio"]
        rows["infer_ratio"] = rows["detr_jax"]["infer_ratio"]
    if args.json:
        record = dict(config=args.config, overrides=args.override, variants=args.variant,
                      threads=args.threads,
                      omp_wait=os.environ.get("OMP_WAIT_POLICY", ""), load=os.getloadavg()[0],
                      xla_flags=os.environ.get("XLA_FLAGS", ""), hf_attn=args.hf_attn, **rows)
        with open(args.json, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
