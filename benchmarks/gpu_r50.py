"""DETR-R50 on one accelerator: train images/s and MFU (fp32, bf16), inference FPS, and HF DETR.

    python benchmarks/gpu_r50.py [--batch 8] [--image 800,1333] [--dtypes float32,bfloat16]
        [--attention dot_product] [--remat none|backbone|all] [--profile DIR] [--skip-hf]
    python benchmarks/gpu_r50.py --smoke      # tiny model and images, runs on CPU in a minute

Everything runs on synthetic batches made on the device (normal images, all pixels real, 8 random
boxes per image), so the input pipeline is not measured. The JAX train step is the one of
detr_jax.train written out here (model, DETR set loss with auxiliary layers and the matcher,
clip + AdamW with the backbone at lr x 0.1, stem and layer1 frozen): this script must not need
ml_collections, TensorFlow or clu, which the GPU machine lacks, so it imports only
detr_jax.models / losses / matching / optim (flax, optax, scipy, numpy).

Reported per dtype: train images/s, TFLOP/s and MFU (FLOPs of one step from XLA's
`compiled.cost_analysis()` over the peak of the device, dense, from PEAK_TFLOPS: float32 uses the
TF32 peak since XLA's default precision on GPU takes TF32 tensor cores), peak device memory,
compile time, inference FPS at each of `--infer-batches`. The HF `DetrForObjectDetection` (PyTorch
eager, same architecture, random weights) is timed the same way in the same run: fp32 (TF32
allowed) and `torch.autocast(bfloat16)`. `--profile DIR` writes a jax.profiler trace of three
steps and times the parts separately: backbone forward+backward, the rest of the model
(projection, transformer, heads) forward+backward, matching + loss, optimiser update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# Dense peak TFLOP/s per device: (bf16 tensor core, tf32 tensor core). Spec sheets (SXM parts).
PEAK_TFLOPS = {
    "H200": (989.4, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.4, 494.7),
    "A100": (312.0, 156.0),
}
NUM_BOXES = 8


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The table's peak for this device kind ("NVIDIA H100 80GB HBM3", ...), or None."""
    for name, (bf16, tf32) in PEAK_TFLOPS.items():
        if all(part in device_kind for part in name.split()):
            return bf16 if dtype == "bfloat16" else tf32
    return None


class Cfg(dict):
    """A dict with attribute access: the mapping-like config that build_model, optim and the
    criterion read (ml_collections is not on the GPU machine)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


OPTIM = Cfg(lr=1e-4, param_rules=[("^backbone/", 0.1)], weight_decay=1e-4, b1=0.9, b2=0.999,
            clip_norm=0.1, warmup_steps=0, schedule="constant", lr_drop_step=0,
            lr_drop_factor=0.1, final_lr_factor=0.01)


def model_config(args, dtype: str) -> Cfg:
    """The config fields that detr_jax.models.build_model and optim.optimizer_rules read (the
    schema of detr_jax/config_base.py): the paper's DETR-R50, or with --smoke
    tests/hf_reference.py's SMALL (ResNet-18 at width 8, 2+3 layers of d=32)."""
    s = args.smoke
    m = Cfg(
        name="detr", hidden_dim=32 if s else 256, dtype=dtype,
        backbone=Cfg(name="resnet18" if s else "resnet50", width=8 if s else 64,
                     norm="frozen_bn", dilation=False, frozen_stages=2, zero_init_residual=False,
                     mask_features=args.mask, remat=args.remat in ("backbone", "all")),
        neck=Cfg(name="single_level", level="C5", position_embedding="sine"),
        transformer=Cfg(name="detr", nheads=4 if s else 8, enc_layers=2 if s else 6,
                        dec_layers=3 if s else 6, dim_feedforward=64 if s else 2048, dropout=0.1,
                        drop_path=0.0, pre_norm=False, attention_impl=args.attention,
                        remat_encoder=args.remat == "all", remat_decoder=args.remat == "all"),
        queries=Cfg(name="learned", num_queries=12 if s else 100, init_std=1.0, num_groups=1),
        heads=Cfg(name="class_box", dense_aux=False),
    )
    return Cfg(model=m, num_classes=5 if s else 91, freeze="none", optim=OPTIM)


# DETR's criterion (config_base defaults): terms and their weights, matching costs.
LOSS_TERMS_CFG = {"labels": {"eos_coef": 0.1, "label_smoothing": 0.0}, "boxes": {},
                  "cardinality": {}}
LOSS_WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
MATCH_COSTS = {"class": 1.0, "bbox": 5.0, "giou": 2.0}


def timed(fn, steps: int, warmup: int = 1) -> float:
    """Median seconds per call of fn() (fn blocks until its work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def xla_flops(compiled) -> float:
    """FLOPs of one call from XLA's `cost_analysis()` (NaN when the backend gives none)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def xla_peak_bytes(compiled) -> float:
    """XLA's `memory_analysis()` peak: arguments + outputs + temporaries - aliased (NaN if none)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return float("nan")
    return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)


class JaxDetr:
    """The model, a jitted train step (state donated) and eval forward for one dtype."""

    def __init__(self, args, dtype: str):
        import jax

        from detr_jax import optim
        from detr_jax.losses import LOSS_TERMS, Criterion
        from detr_jax.matching import get_matcher
        from detr_jax.models import build_model, init_variables

        self.jax, self.args = jax, args
        cfg = model_config(args, dtype)
        self.num_classes = cfg.num_classes
        self.model = model = build_model(cfg)
        key = jax.random.PRNGKey(0)
        self.params = jax.jit(lambda r: init_variables(model, args.image, r))(key)["params"]
        rules = optim.optimizer_rules(cfg, model, self.params)  # frozen BN, stem + layer1
        self.tx, _ = optim.make_optimizer(OPTIM, 1000, self.params, rules)
        self.opt_state = jax.jit(self.tx.init)(self.params)
        self.matcher = get_matcher(args.matcher)
        criterion = Criterion(LOSS_TERMS_CFG, LOSS_WEIGHTS, LOSS_TERMS, self.matcher, MATCH_COSTS,
                              aux_loss=True)
        # The model's group count is a Python int, which a jit boundary would make an array.
        groups = cfg.model.queries.num_groups
        self.loss_fn = lambda out, batch: criterion(dict(out, num_query_groups=groups), batch)

        def train_step(params, opt_state, batch, rng):
            def loss_of(p):
                out = model.apply({"params": p}, batch["image"], batch["pixel_mask"], train=True,
                                  rngs={"dropout": rng, "droppath": rng})
                return self.loss_fn(out, batch)[0]

            loss, grads = jax.value_and_grad(loss_of)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return jax.tree.map(lambda p, u: p + u, params, updates), opt_state, loss

        self.batch = self.make_batch(args.batch)
        self.rng = jax.random.PRNGKey(1)
        t = time.perf_counter()
        lowered = jax.jit(train_step, donate_argnums=(0, 1)).lower(
            self.params, self.opt_state, self.batch, self.rng
        )
        self.step = lowered.compile()
        self.compile_s = time.perf_counter() - t
        self.flops = xla_flops(self.step)
        self.xla_gib = xla_peak_bytes(self.step) / 2**30
        self.forward = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m))

    def make_batch(self, b: int) -> dict:
        jax, jnp = self.jax, self.jax.numpy
        h, w = self.args.image
        k = jax.random.split(jax.random.PRNGKey(b), 4)
        centre = jax.random.uniform(k[2], (b, NUM_BOXES, 2), minval=0.25, maxval=0.75)
        size = jax.random.uniform(k[3], (b, NUM_BOXES, 2), minval=0.05, maxval=0.4)
        return {
            "image": jax.random.normal(k[0], (b, h, w, 3)),
            "pixel_mask": jnp.ones((b, h, w), bool),
            "labels": jax.random.randint(k[1], (b, NUM_BOXES), 0, self.num_classes),
            "boxes": jnp.concatenate([centre, size], -1),
            "box_valid": jnp.ones((b, NUM_BOXES), bool),
        }

    def train_once(self) -> None:
        self.params, self.opt_state, loss = self.step(
            self.params, self.opt_state, self.batch, self.rng
        )
        self.loss = float(loss)  # blocks

    def infer_fps(self, b: int, steps: int) -> float:
        batch = self.make_batch(b)
        run = lambda: self.jax.block_until_ready(
            self.forward(self.params, batch["image"], batch["pixel_mask"])
        )
        return b / timed(run, steps)

    def breakdown(self, steps: int) -> dict[str, float]:
        """Milliseconds of the parts, each jitted and timed on its own (rough: no overlap)."""
        jax, jnp, model = self.jax, self.jax.numpy, self.model
        batch, params = self.batch, self.params
        bb = model.backbone.clone(parent=None)  # the model's own ResNet, on its own

        def backbone_sum(p):
            feat = bb.apply({"params": p}, batch["image"], batch["pixel_mask"])["C5"].features
            return jnp.sum(feat.astype(jnp.float32))

        def model_sum(p):
            out = model.apply({"params": p}, batch["image"], batch["pixel_mask"], train=True,
                              rngs={"dropout": self.rng, "droppath": self.rng})
            return jnp.sum(out["pred_logits"]) + jnp.sum(out["pred_boxes"])

        out = jax.jit(lambda p: model.apply({"params": p}, batch["image"], batch["pixel_mask"]))(
            params
        )
        grads = jax.tree.map(jnp.ones_like, params)
        parts = {
            "backbone fwd+bwd": (jax.jit(jax.grad(backbone_sum)), (params["backbone"],)),
            "model fwd+bwd": (jax.jit(jax.grad(model_sum)), (params,)),
            "matching + loss": (jax.jit(self.loss_fn), (out, batch)),
            "optimiser": (jax.jit(self.tx.update), (grads, self.opt_state, params)),
        }
        ms = {
            name: 1e3 * timed(lambda f=f, a=a: jax.block_until_ready(f(*a)), steps)
            for name, (f, a) in parts.items()
        }
        ms["transformer + heads fwd+bwd (model - backbone)"] = (
            ms["model fwd+bwd"] - ms["backbone fwd+bwd"]
        )
        return ms


class TorchDetr:
    """HF DetrForObjectDetection (same architecture, random weights) on torch's device."""

    def __init__(self, args, device: str):
        import hf_reference as ref
        import torch

        self.torch, self.device, self.args = torch, device, args
        if device == "cpu":
            torch.set_num_threads(1)  # smoke runs only: no OpenMP spinning on a shared CPU
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        spec = ref.SMALL if args.smoke else ref.R50
        model = ref.build_hf_detr(spec, attention_dropout=0.1, activation_dropout=0.1)
        model.config._attn_implementation = "sdpa"
        model.config.auxiliary_loss = True
        backbone = model.model.backbone.model
        backbone.requires_grad_(True)  # HF's name filter freezes its whole native ResNet
        for module in (backbone.embedder, backbone.encoder.stages[0]):
            module.requires_grad_(False)
        self.model = model.to(device)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if not n.startswith("model.backbone.")]},
            {"params": [p for n, p in named if n.startswith("model.backbone.")], "lr": 1e-5},
        ]
        self.params = [p for _, p in named]
        self.opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=1e-4)
        self.num_labels = spec["num_labels"]

    def _batch(self, b: int):
        torch = self.torch
        h, w = self.args.image
        g = torch.Generator(device="cpu").manual_seed(b)
        pixels = torch.randn(b, 3, h, w, generator=g).to(self.device)
        mask = torch.ones(b, h, w, dtype=torch.long, device=self.device)
        boxes = torch.cat([torch.rand(b, NUM_BOXES, 2, generator=g) * 0.5 + 0.25,
                           torch.rand(b, NUM_BOXES, 2, generator=g) * 0.35 + 0.05], -1)
        labels = [{"class_labels": torch.randint(0, self.num_labels, (NUM_BOXES,),
                                                 generator=g).to(self.device),

                   "boxes": boxes[i].to(self.device)} for i in range(b)]
        return pixels, mask, labels

    def _sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def train_ips(self, dtype: str, steps: int) -> float:
        torch = self.torch
        pixels, mask, labels = self._batch(self.args.batch)
        self.model.train()

        def step():
            with torch.autocast(self.device, torch.bfloat16, enabled=dtype == "bfloat16"):
                loss = self.model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 0.1)
            self.opt.step()
            self._sync()

        return self.args.batch / timed(step, steps, warmup=2)

    def infer_fps(self, dtype: str, b: int, steps: int) -> float:
        torch = self.torch
        pixels, mask, _ = self._batch(b)
        self.model.eval()

        def run():
            with torch.inference_mode(), torch.autocast(
                self.device, torch.bfloat16, enabled=dtype == "bfloat16"
            ):
                self.model(pixel_values=pixels, pixel_mask=mask)
            self._sync()

        return b / timed(run, steps, warmup=2)

    def peak_gib(self) -> float:
        if self.device != "cuda":
            return float("nan")
        return self.torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="train batch (one device)")
    p.add_argument("--image", default="800,1333", help="H,W of every image")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--dtypes", default="bfloat16,float32", help="run in this order")
    p.add_argument("--infer-batches", default="1,8")
    p.add_argument("--attention", default="dot_product", help="model.transformer.attention_impl")
    p.add_argument("--remat", default="none", choices=("none", "backbone", "all"))
    p.add_argument("--matcher", default="hungarian_scipy")
    p.add_argument("--mask", action="store_true", help="model.backbone.mask_features (HF: off)")
    p.add_argument("--profile", default="", help="write a jax.profiler trace here + breakdown")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny model, 64x96 images, 2 steps")
    p.add_argument("--json", default="", help="append the results as one JSON line here")
    args = p.parse_args()
    if args.smoke:
        args.image, args.batch, args.steps, args.infer_batches = "64,96", 2, 2, "1,2"
    args.image = tuple(int(v) for v in args.image.split(","))
    import jax

    device = jax.devices()[0]
    kind = device.device_kind
    print(f"jax {jax.__version__} on {device.platform}: {kind}; image {args.image}, train batch "
          f"{args.batch}, attention {args.attention}, remat {args.remat}, matcher {args.matcher}")
    results: dict = {"device": kind, "image": args.image, "batch": args.batch, "jax": {}, "hf": {}}
    infer_batches = [int(b) for b in args.infer_batches.split(",")]
    for dtype in args.dtypes.split(","):
        jx = JaxDetr(args, dtype)
        jx.train_once()
        step_s = timed(jx.train_once, args.steps)
        tflops = jx.flops / step_s / 1e12
        peak = peak_tflops(kind, dtype)
        row = dict(train_images_s=args.batch / step_s, step_ms=1e3 * step_s, loss=jx.loss,
                   tflop_per_step=jx.flops / 1e12, tflops=tflops,
                   mfu=tflops / peak if peak else None, compile_s=jx.compile_s,
                   xla_gib=jx.xla_gib)
        stats = device.memory_stats() or {}
        row["device_peak_gib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**30
        row.update({f"infer_fps_b{b}": jx.infer_fps(b, args.steps) for b in infer_batches})
        if args.profile and dtype == args.dtypes.split(",")[-1]:
            with jax.profiler.trace(args.profile):
                for _ in range(3):
                    jx.train_once()
            row["breakdown_ms"] = jx.breakdown(args.steps)
        results["jax"][dtype] = row
        del jx
    if not args.skip_hf:
        import torch

        th = TorchDetr(args, "cuda" if torch.cuda.is_available() else "cpu")
        for dtype in args.dtypes.split(","):
            th.torch.cuda.reset_peak_memory_stats() if th.device == "cuda" else None
            row = dict(train_images_s=th.train_ips(dtype, args.steps))
            row.update({f"infer_fps_b{b}": th.infer_fps(dtype, b, args.steps)
                        for b in infer_batches})
            row["device_peak_gib"] = th.peak_gib()
            results["hf"][dtype] = row
    print_table(results, infer_batches)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")


def print_table(results: dict, infer_batches: list[int]) -> None:
    cols = ["train img/s", "step ms", "TFLOP/step", "TFLOP/s", "MFU", "peak GiB", "compile s"]
    cols += [f"infer FPS b{b}" for b in infer_batches]
    print(f"{'impl':20s}" + "".join(f"{c:>14s}" for c in cols))
    for impl in ("jax", "hf"):
        for dtype, r in results[impl].items():
            vals = [r["train_images_s"], r.get("step_ms"), r.get("tflop_per_step"),
                    r.get("tflops"), r.get("mfu"), r.get("device_peak_gib"), r.get("compile_s")]
            vals += [r[f"infer_fps_b{b}"] for b in infer_batches]
            name = ("detr_jax " if impl == "jax" else "HF torch ") + dtype
            print(f"{name:20s}" + "".join(
                f"{'-':>14s}" if v is None else f"{v:14.3g}" for v in vals))
            for part, ms in r.get("breakdown_ms", {}).items():
                print(f"    {part:48s} {ms:9.1f} ms")


if __name__ == "__main__":
    main()
