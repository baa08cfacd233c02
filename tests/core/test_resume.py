"""Training that survives: kill -9 and resume bit-exactly, SIGTERM, crash mid-save, NaN batches.

The straight run is conftest's `cli_run` (tiny config, 6 steps, fresh workdir). `chain` runs the
same config in a second workdir as three processes: A (fresh) is killed with SIGKILL right after
the checkpoint of a random step k in {1, 2} appears; B resumes and gets SIGTERM once it has logged
a step, so it must save at the next step boundary and exit 0 within 60 s; a fake half-written
checkpoint is then left in the directory; C resumes and finishes. C's final state must be bitwise
equal to cli_run's. These tests are marked slow (run them with `pytest -m slow
tests/core/test_resume.py`). The NaN test runs in-process in the default suite and doubles as the
same-seed determinism check. The subprocesses share conftest's persistent XLA cache, so the
tiny model's steps compile once per session.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-m", "detr_jax.main", "--config=tests/tiny_config.py"]
VOLATILE = {"time", "steps_per_sec", "train_time_s"}


@pytest.fixture(scope="module")
def env():
    return dict(os.environ, JAX_PLATFORMS="cpu")  # with conftest's shared compilation cache


def _steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait_for(predicate, proc, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _load_state(workdir, step: int) -> dict:
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    args = ocp.args.Composite(state=ocp.args.StandardRestore())
    return manager.restore(step, args=args)["state"]


def _metrics(workdir) -> list[dict]:
    """The complete records of metrics.jsonl; none before the run has logged anything (A may be
    killed before its first log), and a line still being written is not a record yet."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _assert_bitwise_equal(a, b) -> None:
    import jax

    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b)
    for path, x in flat_a:
        y = flat_b[path]
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("chain")
    out: dict = {"workdir": workdir, "k": random.Random().choice([1, 2])}
    args = [*CLI, f"--workdir={workdir}"]

    # A: fresh run, checkpoint every step, kill -9 once step k is checkpointed.
    with open(workdir / "a.log", "w") as log:
        proc = subprocess.Popen(
            [*args, "--config.checkpoint_every=1"], cwd=ROOT, env=env, stderr=log, stdout=log
        )
        _wait_for(lambda: out["k"] in _steps(workdir), proc, 300, f"checkpoint {out['k']}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out["a_returncode"] = proc.returncode
    out["killed_at"] = _steps(workdir)[-1]
    out["a_state1"] = _load_state(workdir, 1)  # before later saves rotate it out

    # B: resumes; gets SIGTERM once it has logged its first step.
    log_b = workdir / "b.log"
    n_before = len(_metrics(workdir))  # A may have logged step 3 before it was killed
    with open(log_b, "w") as log:
        proc = subprocess.Popen(
            [*args, "--config.checkpoint_every=100", "--config.log_every=1"],
            cwd=ROOT,
            env=env,
            stderr=log,
            stdout=log,
        )
        logged = lambda: [m["step"] for m in _metrics(workdir)[n_before:]]
        _wait_for(logged, proc, 300, "B's first step")
        proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        out["b_last_logged"] = max(logged())
        out["b_returncode"] = proc.wait(timeout=120)
        out["b_exit_s"] = time.time() - t0
    out["b_log"] = log_b.read_text()
    out["b_summary"] = json.loads((workdir / "train_summary.json").read_text())
    out["stopped_at"] = _steps(workdir)[-1]

    # A save that crashed half-way: orbax's temporary directory for a later step, data missing.
    fake = workdir / "checkpoints" / f"{out['stopped_at'] + 1}.orbax-checkpoint-tmp"
    shutil.copytree(workdir / "checkpoints" / str(out["stopped_at"]), fake)
    shutil.rmtree(fake / "state" / "d", ignore_errors=True)

    # C: resumes from B's checkpoint and finishes (with the same checkpoint_every as cli_run).
    proc = subprocess.run(
        [*args, "--config.checkpoint_every=3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out["c_returncode"], out["c_log"] = proc.returncode, proc.stderr
    return out


@pytest.mark.slow  # three training processes: ~80 s on 2 idle cores
def test_kill9_then_sigterm_then_resume_is_bitwise_equal_to_a_straight_run(cli_run, chain):
    straight, proc = cli_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert chain["a_returncode"] == -signal.SIGKILL
    assert chain["k"] <= chain["killed_at"] < 6
    assert chain["c_returncode"] == 0, chain["c_log"][-3000:]
    resumed = chain["workdir"]
    assert f"at step {chain['stopped_at']}" in chain["c_log"]  # resumed from B's checkpoint
    a, b = _load_state(straight, 6), _load_state(resumed, 6)
    assert int(a["step"]) == int(b["step"]) == 6
    _assert_bitwise_equal(a, b)  # params, batch_stats, opt_state, rng, step
    ev_a = json.loads((straight / "eval_results.json").read_text())
    ev_b = json.loads((resumed / "eval_results.json").read_text())
    assert ev_a["metrics"] == ev_b["metrics"]


@pytest.mark.slow  # three training processes: ~80 s on 2 idle cores
def test_sigterm_saves_at_the_next_step_boundary_and_exits_cleanly(chain):
    assert chain["b_returncode"] == 0, chain["b_log"][-3000:]
    assert chain["b_exit_s"] < 60
    assert "received SIGTERM" in chain["b_log"]
    assert f"at step {chain['killed_at']}" in chain["b_log"]  # resumed after the kill -9
    # The signal came after step b_last_logged was logged: it stops there or one step later.
    assert chain["b_last_logged"] <= chain["stopped_at"] <= chain["b_last_logged"] + 1
    assert chain["stopped_at"] < 6
    assert chain["b_summary"]["preempted"] is True
    assert chain["b_summary"]["step"] == chain["stopped_at"]


@pytest.mark.slow  # three training processes: ~80 s on 2 idle cores
def test_half_written_checkpoint_is_ignored_at_restart(chain):
    # C restarted with a fake temporary directory of step stopped_at+1 present.
    assert chain["c_returncode"] == 0, chain["c_log"][-3000:]
    assert f"at step {chain['stopped_at']}" in chain["c_log"]


@pytest.mark.slow  # three training processes: ~80 s on 2 idle cores
def test_two_fresh_runs_reach_bitwise_equal_states(cli_run, chain):
    straight, _ = cli_run
    # A (killed later) and cli_run are both fresh runs with seed 0; orbax saved step 1 in both.
    _assert_bitwise_equal(_load_state(straight, 1), chain["a_state1"])


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(cli_run, tmp_path):
    import jax
    from conftest import tiny_config

    from detr_jax import train
    from detr_jax.core import checkpointing
    from detr_jax.models import build_model

    straight, _ = cli_run
    shutil.copytree(straight / "checkpoints", tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints" / "6" / "state" / "d")  # written, then lost
    config = tiny_config()
    model = build_model(config)
    rng = jax.random.PRNGKey(0)
    tx, _ = train.make_optimizer_for(config, model, rng)  # as the training run built it
    template = jax.eval_shape(lambda r: train.create_train_state(config, model, tx, r), rng)
    manager = checkpointing.make_manager(str(tmp_path), every=3, keep=3)
    restored, meta = checkpointing.restore_latest(manager, template)
    assert meta["step"] == 3 and int(restored.step) == 3
    saved = _load_state(straight, 3)
    _assert_bitwise_equal(
        {"params": restored.params, "batch_stats": restored.batch_stats},
        {"params": saved["params"], "batch_stats": saved["batch_stats"]},
    )


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_nan_batches_skip_updates_then_stop_naming_the_last_good_checkpoint(
    cli_run, tmp_path, monkeypatch, caplog
):
    """Also the determinism check: steps 1-3 are clean, and log the same metrics as cli_run."""
    from conftest import tiny_config

    from detr_jax import data, train

    real = data.train_batches

    def poisoned(*args, start_step, **kwargs):
        for i, batch in enumerate(real(*args, start_step=start_step, **kwargs)):
            if start_step + i + 1 >= 4:  # every batch from step 4 on has a NaN pixel
                batch["image"][0, 0, 0, 0] = np.nan
            yield batch

    monkeypatch.setattr(data, "train_batches", poisoned)
    config = tiny_config(checkpoint_every=1, max_consecutive_nonfinite=2)
    with pytest.raises(train.NonFiniteStop) as e, caplog.at_level("WARNING"):
        train.train_and_evaluate(config, str(tmp_path))
    last_good = os.path.join(str(tmp_path), "checkpoints", "4")
    assert f"the last good checkpoint is step 4 at {last_good}" in str(e.value)
    assert "max_consecutive_nonfinite=2" in str(e.value)
    assert "non-finite in 2 consecutive steps (4..5" in str(e.value)
    assert "step 4: non-finite loss or gradient norm, update skipped (1 in a row" in caplog.text
    assert "step 5: non-finite loss or gradient norm, update skipped (2 in a row" in caplog.text
    # Step 4 was skipped: its checkpoint holds exactly the state after step 3, but step = 4.
    s3, s4 = _load_state(tmp_path, 3), _load_state(tmp_path, 4)
    keep = ("params", "batch_stats", "opt_state")
    _assert_bitwise_equal({k: s3[k] for k in keep}, {k: s4[k] for k in keep})
    assert int(s4["step"]) == 4
    assert _steps(tmp_path)[-1] == 4  # no checkpoint during the streak

    # Determinism: two fresh runs with the same seed (this one and cli_run) log identical
    # training metrics over the clean steps 1-3, and reach bitwise equal states.
    straight, _ = cli_run

    def step3(workdir):
        (row,) = [m for m in _metrics(workdir) if m["step"] == 3 and "loss" in m]
        return {k: v for k, v in row.items() if k not in VOLATILE}

    assert step3(straight) == step3(tmp_path)
    _assert_bitwise_equal(_load_state(straight, 3), s3)
