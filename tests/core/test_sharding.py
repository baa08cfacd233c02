"""Mesh and state sharding from config.mesh, batch-shape agreement, cluster detection, launcher.

The 1-vs-8-device checks run tests/multidevice_check.py in a subprocess with 8 simulated CPU
devices: the loss and the gradients of one global batch must match the 1-device ones (relative
1e-5), for mesh data=2 x fsdp=4 (default run; params really sharded) and data=8 (slow).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import tiny_config
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from detr_jax.config_validation import ConfigError, validate_config
from detr_jax.core import distributed, sharding
from detr_jax.data.batching import collate, pad_to_bucket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "launch"))


def test_leaf_spec_shards_the_largest_divisible_dimension_of_big_leaves():
    assert sharding.leaf_spec((3, 3, 256, 512), 4) == P(None, None, None, "fsdp")
    assert sharding.leaf_spec((2048, 256), 4) == P("fsdp", None)
    assert sharding.leaf_spec((256, 256), 4) == P(None, "fsdp")  # ties: the last
    assert sharding.leaf_spec((4096, 6), 4) == P("fsdp", None)
    assert sharding.leaf_spec((6, 4096), 3) == P("fsdp", None)  # only 6 divides by 3
    assert sharding.leaf_spec((6, 4095), 3) == P(None, "fsdp")
    assert sharding.leaf_spec((256,), 4) == P()  # small: replicated
    assert sharding.leaf_spec((5, 7, 1001), 4) == P()  # nothing divisible by 4
    assert sharding.leaf_spec((2048, 256), 1) == P()  # no fsdp


def test_state_shardings_follow_the_mesh():
    mesh = sharding.make_mesh(ConfigDict({"data": -1, "fsdp": 1}))
    assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
    tree = {"w": jax.ShapeDtypeStruct((2048, 256), np.float32), "step": np.zeros((), np.int32)}
    specs = jax.tree.map(lambda s: s.spec, sharding.state_shardings(tree, mesh))
    assert specs == {"w": P(), "step": P()}  # fsdp = 1: all replicated
    assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))


@pytest.mark.parametrize(
    "mesh, devices, message",
    [
        ({"data": -1, "fsdp": 3}, 8, "mesh.fsdp=3 must divide the device count 8"),
        ({"data": 2, "fsdp": 2}, 8, "mesh.data=2 * mesh.fsdp=2 = 4 must equal the device count 8"),
        ({"data": 0, "fsdp": 1}, 8, "mesh.data=0 must be a positive integer or -1"),
        ({"data": -1, "fsdp": 0}, 8, "mesh.fsdp=0 must be a positive integer"),
    ],
)
def test_mesh_errors_are_one_line_naming_the_field(mesh, devices, message):
    config = tiny_config(batch_size=8, **{"eval.batch_size": 8})
    config.mesh.update(mesh)
    with pytest.raises(ConfigError) as e:
        validate_config(config, devices)
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith(message), lines
    with pytest.raises(ValueError, match=re.escape(message)):
        sharding.mesh_shape(config.mesh, devices)


def test_batch_must_split_over_data_times_fsdp():
    config = tiny_config(batch_size=6, **{"eval.batch_size": 8, "mesh.fsdp": 4})
    with pytest.raises(ConfigError) as e:
        validate_config(config, 8)
    (line,) = str(e.value).splitlines()[1:]
    assert line.strip().startswith("batch_size=6 must be divisible by the device count 8"), line
    assert "mesh.data * mesh.fsdp" in line
    validate_config(tiny_config(batch_size=8, **{"eval.batch_size": 8, "mesh.fsdp": 4}), 8)
    assert sharding.mesh_shape(tiny_config(**{"mesh.fsdp": 4}).mesh, 8) == (2, 4)


def _sample(h, w, i):
    return {"image": np.full((h, w, 3), 100, np.uint8), "boxes": np.array([[1, 1, 5, 5]], float),
            "labels": np.array([1]), "image_id": i}


def test_pad_to_bucket_pads_images_and_masks_only():
    batch, _ = collate([_sample(40, 60, 0)], buckets=[(64, 64), (96, 128)], max_boxes=3)
    padded = pad_to_bucket(batch, 96, 128)
    assert padded["image"].shape == (1, 96, 128, 3) and padded["pixel_mask"].shape == (1, 96, 128)
    assert padded["pixel_mask"].sum() == 40 * 60 and not padded["image"][:, 64:].any()
    np.testing.assert_array_equal(padded["image"][:, :64, :64], batch["image"])
    for k in ("boxes", "labels", "size", "box_valid"):
        assert padded[k] is batch[k]
    with pytest.raises(ValueError, match="smaller bucket"):
        pad_to_bucket(padded, 64, 64)


def test_processes_agree_on_the_bucket_of_the_whole_global_batch(monkeypatch):
    """Process 0 holds a landscape image, process 1 a portrait one: both pad to the square."""
    buckets = [(64, 96), (96, 64), (96, 96)]

    class FakeGather:  # what process 1 would report, per round
        def __init__(self, name):
            self.rounds = iter(["90,50", "20,20"])

        def __call__(self, value):
            return [value, next(self.rounds)]

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(distributed, "HostAllGather", FakeGather)
    local = [collate([_sample(50, 90, 0)], buckets=buckets, max_boxes=3)[0],
             collate([_sample(30, 30, 1)], buckets=buckets, max_boxes=3)[0]]
    assert local[0]["image"].shape[1:3] == (64, 96)
    out = list(distributed.agree_on_buckets(iter(local), buckets, "train/0"))
    assert out[0]["image"].shape[1:3] == (96, 96)  # max h 90 (process 1), max w 90 (process 0)
    assert out[1]["image"].shape[1:3] == (64, 96)  # unchanged: the smallest fitting bucket


def test_cluster_detection_and_single_process_noop():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert distributed.detect_cluster(slurm) == "slurm"
    assert distributed.detect_cluster(dict(slurm, SLURM_NTASKS="1")) is None
    assert distributed.detect_cluster({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"}) is None  # salloc
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "a,b"}) == "tpu"
    one_per_node = {"SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "8"}
    assert distributed._slurm_local_devices(one_per_node) == list(range(8))
    assert distributed._slurm_local_devices({"SLURM_STEP_TASKS_PER_NODE": "8(x2)"}) is None

    class Flags:
        coordinator_address, num_processes, process_id, local_device_ids = "", 0, -1, ""

    assert distributed.initialize(Flags(), env={}) is False  # no cluster: one process
    Flags.num_processes = 1
    assert distributed.initialize(Flags(), env={}) is False
    Flags.coordinator_address, Flags.num_processes = "127.0.0.1:1234", 2
    with pytest.raises(ValueError, match="--process_id"):
        distributed.initialize(Flags(), env={})


def test_local_launcher_environment_and_exit_status():
    import local

    env = local.child_env(4, base={"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --a"})
    assert env["JAX_PLATFORMS"] == "cpu"
    assert env["XLA_FLAGS"] == "--a --xla_force_host_platform_device_count=4"
    assert local.exit_status([0, 0]) == 0
    assert local.exit_status([0, 3]) == 3
    assert local.exit_status([2, -9]) == 137  # killed by SIGKILL


def _multidevice(*meshes: str) -> dict:
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        # Numerics, not speed: skipping LLVM's expensive passes halves the three compiles.
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
        "--xla_llvm_disable_expensive_passes=true",
    )
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "multidevice_check.py"), *meshes],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_matches_one_device(out: dict, name: str) -> None:
    ref, row = out["one_device"], out[name]
    assert row["devices"] == 8 and ref["devices"] == 1
    assert ref["num_boxes"] == row["num_boxes"] == out["batch_boxes"]  # global, not per device
    assert row["loss_rel"] < 1e-5, row
    assert row["grad_rel_max"] < 1e-5, row
    assert row["grad_zero_abs"] < 1e-5, row  # true-zero gradients stay ~0
    assert row["grad_norm_rel"] < 1e-5, row


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_loss_and_gradients_on_data2_fsdp4_match_one_device():
    out = _multidevice("data2_fsdp4")
    _check_matches_one_device(out, "data2_fsdp4")
    row = out["data2_fsdp4"]
    assert row["mesh"] == {"data": 2, "fsdp": 4}
    assert "fsdp" in row["param_spec"] and "fsdp" in row["grad_spec"], row  # really sharded
    assert row["sharded_leaves"] > 0
    assert out["one_device"]["param_spec"] == "P()"


@pytest.mark.slow  # two more compiles (~40 s on 2 busy cores)
def test_loss_and_gradients_on_data8_match_one_device():
    out = _multidevice("data8")
    _check_matches_one_device(out, "data8")
    assert out["data8"]["mesh"] == {"data": 8, "fsdp": 1}
    assert out["data8"]["param_spec"] == "P()"  # fsdp = 1: replicated


def test_remote_workdir_files_go_through_epath(tmp_path, monkeypatch):
    """gs:// workdirs: the same files through etils.epath (here on a local path posing as one)."""
    from detr_jax.core import fileio, writers
    from detr_jax.evaluation.coco_eval import write_eval_files
    from detr_jax.evaluation.visualize import save_png

    opened = []
    real_epath = fileio._epath
    monkeypatch.setattr(fileio, "is_remote", lambda path: True)
    monkeypatch.setattr(fileio, "_epath", lambda path: opened.append(path) or real_epath(path))
    writer = writers.MetricWriter(str(tmp_path), use_tensorboard=False)
    writer.write_scalars(1, {"loss": 2.0})
    assert not (tmp_path / "metrics.jsonl").exists()  # batched: object stores cannot append
    writer.write_scalars(2, {"loss": 1.0})
    writer.flush()
    writer.write_scalars(3, {"loss": 0.5})
    writer.flush()
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    write_eval_files(str(tmp_path / "ev"), {"images": []}, [], {"AP": 0.5}, step=3)
    save_png(str(tmp_path / "ev" / "x.png"), np.zeros((4, 4, 3), np.uint8))
    assert json.loads((tmp_path / "ev" / "eval_results.json").read_text())["metrics"] == {
        "AP": 0.5
    }
    assert (tmp_path / "ev" / "x.png").read_bytes()[:4] == b"\x89PNG"
    assert any(str(p).endswith("x.png") for p in opened)


FAKE_TRAINER = '''
import signal, sys, time
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
pid = int(args["process_id"])
if args.get("fail") == "1" and pid == 1:
    sys.exit(5)
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
print("ready", args["coordinator_address"], args["num_processes"], args["config.x"], flush=True)
deadline = time.time() + 60
while not got and time.time() < deadline:
    time.sleep(0.05)
print("stopping", flush=True)
sys.exit(0 if pid == 0 else 3)
'''


def _local_launcher(tmp_path, *extra):
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    cmd = [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--num_processes=2",
           "--module=fake_trainer", "--config.x=7", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_local_launcher_forwards_sigterm_prefixes_output_and_returns_the_worst_code(tmp_path):
    import signal

    proc = _local_launcher(tmp_path)
    lines = []
    while sum(" ready " in ln for ln in lines) < 2:
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    log = "".join(lines) + out
    assert proc.returncode == 3, log  # process 1 exits 3, process 0 exits 0
    ready = [ln for ln in log.splitlines() if " ready " in ln]
    assert sorted(ln[:4] for ln in ready) == ["[p0]", "[p1]"]
    assert all(ln.split()[2].startswith("127.0.0.1:") and ln.split()[3:] == ["2", "7"]
               for ln in ready), ready
    assert "[p0] stopping" in log and "[p1] stopping" in log
    assert "[local] exit codes [0, 3]" in log


def test_local_launcher_kills_the_others_when_one_process_fails(tmp_path):
    proc = _local_launcher(tmp_path, "--fail=1", "--grace_s=1")
    out, _ = proc.communicate(timeout=60)
    assert "[local] exit codes [-9, 5]" in out, out  # process 0 was waiting: killed
    assert proc.returncode == 137
