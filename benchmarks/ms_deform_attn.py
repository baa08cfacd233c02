"""Deformable attention's core: detr_jax's gather form against HF's pure-PyTorch fallback.

    python benchmarks/ms_deform_attn.py [--repeats 7] [--threads 2]

COCO-like size (issue 14): 4 levels from 100x150 down to 13x19, 300 queries (decoder-sized) and
also the encoder's queries (one per token), 8 heads of 32 channels, 4 points, batch 2. Times the
forward and forward + backward (gradients of sum(out * g) in the values, sampling locations and
attention weights) as the median of `--repeats` interleaved runs, and the peak memory: XLA's
compiled-program temp bytes for JAX, torch's CPU allocator peak is not tracked, so its column is
the Python process's peak RSS growth (a rough figure). Prints a table (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = ((100, 150), (50, 75), (25, 38), (13, 19))
HEADS, DH, POINTS, BATCH = 8, 32, 4, 2


def inputs(lq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = sum(h * w for h, w in SHAPES)
    value = rng.normal(size=(BATCH, n, HEADS, DH)).astype(np.float32)
    loc = rng.uniform(0, 1, size=(BATCH, lq, HEADS, len(SHAPES), POINTS, 2)).astype(np.float32)
    attn = rng.uniform(size=(BATCH, lq, HEADS, len(SHAPES), POINTS)).astype(np.float32)
    attn /= attn.sum(axis=(3, 4), keepdims=True)
    g = rng.normal(size=(BATCH, lq, HEADS * DH)).astype(np.float32)
    return value, loc, attn, g


def jax_fns(g):
    from detr_jax.core.compile_options import step_compiler_options
    from detr_jax.ops.ms_deform_attn import ms_deform_attn

    opts = step_compiler_options(False)
    fwd = jax.jit(lambda v, s, a: ms_deform_attn(v, SHAPES, s, a), compiler_options=opts)
    loss = lambda v, s, a: jnp.sum(ms_deform_attn(v, SHAPES, s, a) * g)
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), compiler_options=opts)
    return fwd, bwd


def torch_fns(g):
    import torch
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        MultiScaleDeformableAttention,
    )

    core = MultiScaleDeformableAttention()
    shapes = torch.tensor(SHAPES)
    start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    g_t = torch.from_numpy(g)

    def fwd(v, s, a):
        with torch.no_grad():
            return core(v, shapes, list(SHAPES), start, s, a, 64)

    def bwd(v, s, a):
        v, s, a = (x.detach().requires_grad_(True) for x in (v, s, a))
        (core(v, shapes, list(SHAPES), start, s, a, 64) * g_t).sum().backward()
        return v.grad, s.grad, a.grad

    return fwd, bwd


def timed(fn, args, block) -> float:
    t = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print("| queries | pass | detr_jax ms | HF PyTorch ms | speed-up | JAX temp MiB |")
    print("|---|---|---|---|---|---|")
    for lq in (300, sum(h * w for h, w in SHAPES)):
        value, loc, attn, g = inputs(lq)
        jf, jb = jax_fns(g)
        tf, tb = torch_fns(g)
        jargs = tuple(jnp.asarray(x) for x in (value, loc, attn))
        targs = tuple(torch.from_numpy(x) for x in (value, loc, attn))
        jblock = lambda out: jax.block_until_ready(out)
        tblock = lambda out: out
        np.testing.assert_allclose(np.asarray(jf(*jargs)), tf(*targs).numpy(), atol=2e-4)
        for name, jfn, tfn in (("forward", jf, tf), ("fwd+bwd", jb, tb)):
            temp = jfn.lower(*jargs).compile().memory_analysis().temp_size_in_bytes / 2**20
            jfn(*jargs)
            tfn(*targs)  # warm-up
            jt, tt = [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit both sides
                jt.append(timed(jfn, jargs, jblock))
                tt.append(timed(tfn, targs, tblock))
            jm, tm = 1e3 * np.median(jt), 1e3 * np.median(tt)
            print(f"| {lq} | {name} | {jm:.1f} | {tm:.1f} | {tm / jm:.2f}x | {temp:.0f} |")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
