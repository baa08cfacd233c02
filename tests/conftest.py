"""Shared fixtures: a tiny config and one short end-to-end run reused by several tests."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole session, inherited by the subprocesses the
# tests start: the tiny model's train and eval steps compile once (about a minute on 2 cores)
# and every later run of the same config, in-process or in a subprocess, loads them. Executables
# holding a host callback (the scipy matcher) are never cached, so the tiny config uses the
# in-jit exact solver; tests of the scipy path name it explicitly.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="detr_jax_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# Tests check values, not speed: XLA's backend optimisation level 0 compiles the tiny model's
# train step in 21 s of CPU instead of 35 s (its init in 7 s instead of 30 s) and runs a step
# in 43 ms instead of 28 ms. Subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import pytest  # noqa: E402

from detr_jax.config_base import base_config, set_field  # noqa: E402


def tiny_config(**overrides):
    """A DETR small enough to compile and step in about a second on one CPU core."""
    c = base_config()
    c.dataset = "shapes"
    c.num_classes = 6
    c.total_steps = 6
    c.batch_size = 4
    c.log_every = 3
    c.eval_every = 0
    c.checkpoint_every = 3
    c.max_boxes = 8
    c.image_buckets = [(96, 96)]
    c.shapes.num_val = 8
    c.eval.batch_size = 4
    c.eval.num_images_to_draw = 2
    c.use_tensorboard = False
    m = c.model
    m.backbone.name = "resnet18"
    m.backbone.width = 8
    m.backbone.norm = "bn"
    m.backbone.frozen_stages = 0
    m.backbone.dilation = True
    m.hidden_dim = 32
    m.transformer.nheads = 4
    m.transformer.enc_layers = 1
    m.transformer.dec_layers = 2
    m.transformer.dim_feedforward = 64
    m.queries.num_queries = 10
    c.optim.lr = 1e-3
    c.optim.param_rules = ()
    c.optim.schedule = "constant"
    c.matcher.name = "hungarian_jax"  # cacheable (see the top of this file); exact, like scipy
    for k, v in overrides.items():
        set_field(c, k, v)
    return c


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    """One `python -m detr_jax.main` run of a few steps (in a subprocess), shared by tests."""
    import subprocess
    import sys

    workdir = tmp_path_factory.mktemp("cli_run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [
        sys.executable,
        "-m",
        "detr_jax.main",
        "--config=tests/tiny_config.py",
        f"--workdir={workdir}",
        "--config.total_steps=6",
        "--config.checkpoint_every=3",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return workdir, proc
