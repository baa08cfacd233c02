"""Two cooperating processes on localhost (gloo CPU collectives) through launch/local.py.

Config: tests/tiny_multiprocess_config.py (mesh data=1 x fsdp=2 over 2 processes x 1 CPU device:
every batch and the big parameter and optimiser leaves are split between the processes; two
image buckets, so the processes agree on each batch's bucket through the key-value store).

- The 2-process run (4 steps, a final evaluation) ends bitwise equal to a 1-process run on 2
  devices fed the same global batches (tests/permuted_main.py orders the rows as the processes
  do), with the same per-step metrics and evaluation (to rounding: the eval rows are not
  reordered); its checkpoint, written by both processes,
  restores in this (1-device) process; only process 0 writes metrics.
- SIGTERM sent to ONE of the processes stops both after the same step, with a checkpoint of that
  step, and both exit 0 (preemption.StopSignal agrees through process_allgather).

Slow: each run compiles the train step in every process (~2-4 min on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "--config=tests/tiny_multiprocess_config.py"
LOCAL = [sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=1"]
VOLATILE = {"time", "steps_per_sec", "train_time_s"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _run(cmd, env, log) -> int:
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=1200).returncode


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    d = tmp_path_factory.mktemp("multiprocess")
    ref_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    ref_cmd = [sys.executable, "tests/permuted_main.py", "--virtual_processes=2", CONFIG,
               f"--workdir={d / 'ref'}"]
    out = {"dir": d}
    out["ref_rc"] = _run(ref_cmd, ref_env, d / "ref.log")
    out["mp_rc"] = _run([*LOCAL, CONFIG, f"--workdir={d / 'mp'}"], env, d / "mp.log")
    return out


def _restore(workdir, config):
    """The newest checkpoint of `workdir`, restored onto this process's single device."""
    from detr_jax import train
    from detr_jax.core import checkpointing
    from detr_jax.models import build_model

    model = build_model(config)
    rng = jax.random.PRNGKey(config.seed)
    tx, _ = train.make_optimizer_for(config, model, rng)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    template = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        jax.eval_shape(lambda r: train.create_train_state(config, model, tx, r), rng),
    )
    manager = checkpointing.make_manager(str(workdir), every=1, keep=10)
    return checkpointing.restore_latest(manager, template)


def _config():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tiny_multiprocess_config import get_config

    return get_config()


def _metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_two_processes_match_one_process_on_the_same_global_batches_bitwise(runs):
    d = runs["dir"]
    assert runs["ref_rc"] == 0, (d / "ref.log").read_text()[-3000:]
    mp_log = (d / "mp.log").read_text()
    assert runs["mp_rc"] == 0, mp_log[-3000:]
    assert "[local] exit codes [0, 0]" in mp_log
    assert "2 process(es)" in mp_log and "mesh {'data': 1, 'fsdp': 2} over 2 process(es)" in mp_log
    config = _config()
    ref, ref_meta = _restore(d / "ref", config)
    mp, mp_meta = _restore(d / "mp", config)  # written by two processes, read by one
    assert ref_meta["step"] == mp_meta["step"] == int(mp.step) == 4
    flat_ref = jax.tree_util.tree_flatten_with_path(ref)[0]
    flat_mp = jax.tree.leaves(mp)
    assert len(flat_ref) == len(flat_mp)
    for (path, a), b in zip(flat_ref, flat_mp, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)
    # Same per-step training metrics; metrics.jsonl comes from process 0 only (one row a step).
    train_rows = lambda w: [m for m in _metrics(w) if "loss" in m]
    assert train_rows(d / "ref") == train_rows(d / "mp")
    assert [m["step"] for m in train_rows(d / "mp")] == [1, 2, 3, 4]
    # The final evaluation: the same detections and AP; its losses and scores agree to rounding
    # only, since the validation images are not reordered (the rows of an eval batch are in
    # process order) and XLA:CPU's Eigen convolutions block a batch's rows by position, so an
    # image's float32 sums can differ in the last bit with its place in the device batch.
    ev_ref = json.loads((d / "ref" / "eval_results.json").read_text())["metrics"]
    ev_mp = json.loads((d / "mp" / "eval_results.json").read_text())["metrics"]
    assert ev_ref.keys() == ev_mp.keys()
    for k, v in ev_ref.items():
        assert ev_mp[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert ev_ref["AP"] == ev_mp["AP"] and ev_ref["AP50"] == ev_mp["AP50"]
    preds = lambda w: sorted(
        (p["image_id"], p["category_id"], p["score"], *p["bbox"])
        for p in json.loads((w / "predictions.json").read_text())
    )
    p_ref, p_mp = preds(d / "ref"), preds(d / "mp")
    assert [p[:2] for p in p_ref] == [p[:2] for p in p_mp]
    np.testing.assert_allclose([p[2:] for p in p_mp], [p[2:] for p in p_ref], rtol=1e-5, atol=1e-6)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, env):
    workdir = tmp_path / "run"
    cmd = [*LOCAL, CONFIG, f"--workdir={workdir}", "--config.total_steps=500",
           "--config.checkpoint_every=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 900
        metrics = workdir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.time() < deadline, "no training step logged"
            time.sleep(0.2)
        pids = dict(re.findall(r"\[local\] process (\d) pid (\d+)", "".join(lines)))
        os.kill(int(pids["1"]), signal.SIGTERM)  # process 1 only
        t0 = time.time()
        rc = proc.wait(timeout=300)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    log = "".join(lines)
    assert rc == 0, log[-3000:]
    assert "[local] exit codes [0, 0]" in log
    assert took < 120
    received = [ln for ln in lines if "received SIGTERM" in ln]
    assert received and all(ln.startswith("[p1]") for ln in received)
    stops = dict(re.findall(r"\[p(\d)\].*stopped by signal after step (\d+)", log))
    assert set(stops) == {"0", "1"} and stops["0"] == stops["1"], log[-3000:]
    step = int(stops["0"])
    assert 1 <= step < 500
    assert (workdir / "checkpoints" / str(step)).is_dir()
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["preempted"] is True and summary["step"] == step
    restored, meta = _restore(workdir, _config())
    assert meta["step"] == step and int(restored.step) == step
