"""The ResNet-18 backbone of DETR's "small" config and its convolutions: XLA:CPU vs PyTorch.

    HF_HUB_OFFLINE=1 python benchmarks/cpu_convs.py [--batch 16] [--threads 2]

First the whole backbone (benchmarks/train_step.py's small config, 128 x 128, stem + layer1
frozen, FrozenBatchNorm): detr_jax's ResNet under `jax.jit` against HF's ResNet backbone in
PyTorch eager, the forward pass and forward + backward of sum(C5^2). Then, for each convolution
shape of that backbone, the median ms of: the forward pass, and forward + backward (input and
kernel gradients of sum(sin(conv))) with XLA's own gradient, with detr_jax's GEMM kernel gradient
(`model.backbone.conv_weight_grad=gemm`, detr_jax/models/conv.py) and in PyTorch. The stem and
layer1 are
frozen in DETR, so only their forward is timed. NHWC/HWIO for JAX, NCHW/OIHW for PyTorch.
JAX compiles with detr_jax's step options (XLA:CPU's YNNPACK fusions off, Eigen convolutions);
`--ynnpack` keeps XLA's default YNNPACK fusions instead.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gpu_r50 import timed  # noqa: E402 (a sibling script; median seconds per call)

# name, input size, Cin, Cout, kernel, stride, trained (backward timed)
CASES = (
    ("stem 7x7/2 3->64", 128, 3, 64, 7, 2, False),
    ("layer1 3x3 64->64", 32, 64, 64, 3, 1, False),
    ("layer2 3x3/2 64->128", 32, 64, 128, 3, 2, True),
    ("layer2 3x3 128->128", 16, 128, 128, 3, 1, True),
    ("layer3 3x3 256->256", 8, 256, 256, 3, 1, True),
    ("layer4 3x3 512->512", 4, 512, 512, 3, 1, True),
    ("layer4 down 1x1/2 256->512", 8, 256, 512, 1, 2, True),
)


def _median_ms(fn) -> float:
    return 1e3 * timed(fn, steps=9, warmup=2)


def backbone(args) -> None:
    """Prints the whole-backbone table (median ms)."""
    import hf_reference as ref
    import jax
    import jax.numpy as jnp
    import torch
    from train_step import CONFIGS, synthetic_batch

    from detr_jax.models.backbones.resnet import ResNet

    spec = CONFIGS["small"]["spec"]
    images, mask, _, _ = synthetic_batch(args.batch, CONFIGS["small"]["image"], 1)
    net = ResNet(depth=18, width=64, norm="frozen_bn", frozen_stages=2, mask_features=False)
    variables = net.init(jax.random.PRNGKey(0), images, mask)

    def c5(v):
        return net.apply(v, images, mask)["C5"].features

    fwd = args.jit(c5)
    fwd_bwd = args.jit(jax.grad(lambda v: jnp.sum(jnp.square(c5(v)))))
    hf_backbone = ref.build_hf_detr(spec).model.backbone.model
    hf_backbone.requires_grad_(True)  # HF's filter froze all of it; freeze stem + stage 1
    for module in (hf_backbone.embedder, hf_backbone.encoder.stages[0]):
        module.requires_grad_(False)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    def torch_fwd():
        with torch.no_grad():
            hf_backbone(pixels)

    def torch_fwd_bwd():
        hf_backbone(pixels).feature_maps[-1].square().sum().backward()

    print(f"batch {args.batch}, torch threads {args.threads}, XLA:CPU YNNPACK fusions "
          f"{'on' if args.ynnpack else 'off'}; median ms")
    print(f"{'ResNet-18 backbone':28s} {'JAX':>8s} {'torch':>9s}")
    for name, jax_fn, torch_fn in (("forward", fwd, torch_fwd),
                                   ("forward + backward", fwd_bwd, torch_fwd_bwd)):
        jax_ms = _median_ms(lambda f=jax_fn: jax.block_until_ready(f(variables)))
        print(f"{name:28s} {jax_ms:8.1f} {_median_ms(torch_fn):9.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--ynnpack", action="store_true", help="XLA:CPU's default YNNPACK fusions")
    args = parser.parse_args()

    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from detr_jax.core.compile_options import step_compiler_options
    from detr_jax.models.conv import conv_gemm_wgrad, conv_xla

    args.jit = functools.partial(jax.jit, compiler_options=step_compiler_options(args.ynnpack))

    torch.set_num_threads(args.threads)
    backbone(args)

    def grad_of(conv, s, p):
        return args.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, s, p, 1))), (0, 1)))

    print(f"{'convolution':28s} {'JAX fwd':>8s} {'torch fwd':>9s} {'JAX f+b':>8s} "
          f"{'gemm f+b':>8s} {'torch f+b':>9s}")
    for name, size, cin, cout, k, s, trained in CASES:
        p = k // 2
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.batch, size, size, cin)).astype(np.float32)
        w = (0.05 * rng.normal(size=(k, k, cin, cout))).astype(np.float32)
        jx, jw = jnp.asarray(x), jnp.asarray(w)
        fwd = args.jit(lambda x, w, s=s, p=p: conv_xla(x, w, s, p, 1))
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()

        def torch_fwd(tx=tx, tw=tw, s=s, p=p):
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, tw, stride=s, padding=p)

        jax_fwd_ms = _median_ms(lambda f=fwd, a=jx, b=jw: jax.block_until_ready(f(a, b)))
        row = [jax_fwd_ms, _median_ms(torch_fwd)]
        if trained:
            txg, twg = tx.clone().requires_grad_(True), tw.clone().requires_grad_(True)

            def torch_fb(s=s, p=p, txg=txg, twg=twg):
                y = torch.nn.functional.conv2d(txg, twg, stride=s, padding=p)
                torch.sin(y).sum().backward()

            for g in (grad_of(conv_xla, s, p), grad_of(conv_gemm_wgrad, s, p)):
                row.append(_median_ms(lambda g=g, a=jx, b=jw: jax.block_until_ready(g(a, b))))
            row.append(_median_ms(torch_fb))
        print(f"{name:28s} " + " ".join(f"{v:8.1f}" for v in row), flush=True)


if __name__ == "__main__":
    main()
