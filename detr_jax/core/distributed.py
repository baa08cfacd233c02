"""Multi-process runs: `jax.distributed` start-up, and batch shapes all processes agree on.

Start-up (`initialize`, called by `detr_jax.main` before anything touches the devices):

- explicit: ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (and optionally
  ``--local_device_ids=0,1``) on every process, e.g. from `launch/local.py`;
- automatic under SLURM (an ``srun`` step with more than one task) and on Cloud TPU VMs (pod
  slices): `jax.distributed.initialize()` reads the cluster from the environment;
- otherwise nothing: one process, `jax.process_count() == 1`.

Data: each process loads only its own share of every global batch (`data.train_batches` with
`process_index` / `process_count`) and `jax.make_array_from_process_local_data` assembles the
global arrays. With several `image_buckets` each process would pick the bucket that fits its own
images, and the arrays would not assemble; `agree_on_buckets` exchanges the largest image size of
each local batch between processes (through the coordination service's key-value store: host
only, no device work, run in the input thread) and pads every local batch to the bucket that fits
the whole global batch, i.e. the bucket one process would have picked.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from detr_jax.data.batching import choose_bucket, pad_to_bucket

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_TPU_VARS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "CLOUD_TPU_TASK_ID")
_TIMEOUT_MS = 30 * 60 * 1000  # waiting for another process's batch shape


def detect_cluster(env: Mapping[str, str] | None = None) -> str | None:
    """'slurm' inside an srun step with > 1 task, 'tpu' on a Cloud TPU VM, else None."""
    env = os.environ if env is None else env
    if all(v in env for v in _SLURM_VARS):
        tasks = env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"])
        if int(tasks) > 1:
            return "slurm"
    if any(v in env for v in _TPU_VARS):
        return "tpu"
    if importlib.util.find_spec("libtpu") is not None and (
        glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    ):
        return "tpu"
    return None


def _slurm_local_devices(env: Mapping[str, str]) -> list[int] | None:
    """All GPUs of the node when SLURM runs one task per node (JAX would take only GPU 0)."""
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", ""))
    gpus = env.get("SLURM_GPUS_ON_NODE", "")
    if per_node.split("(")[0] == "1" and gpus.isdigit() and int(gpus) > 1:
        return list(range(int(gpus)))
    return None  # one task per GPU: JAX gives task SLURM_LOCALID that GPU


def initialize(flags: Any = None, env: Mapping[str, str] | None = None) -> bool:
    """Starts `jax.distributed` when this is one of several processes; returns whether it did.

    `flags`: anything with `coordinator_address` (str), `num_processes` (int, 0 = automatic),
    `process_id` (int) and `local_device_ids` (comma-separated str), e.g. absl's FLAGS; missing
    attributes count as unset. Explicit values win over the cluster environment.
    """
    env = os.environ if env is None else env
    if jax.distributed.is_initialized():
        return True
    address = getattr(flags, "coordinator_address", "") or ""
    num = int(getattr(flags, "num_processes", 0) or 0)
    pid = getattr(flags, "process_id", -1)
    ids_text = getattr(flags, "local_device_ids", "") or ""
    local_ids = [int(i) for i in ids_text.split(",")] if ids_text else None
    if address or num:
        if num == 1:
            return False
        if not (address and num > 1 and pid is not None and 0 <= int(pid) < num):
            raise ValueError(
                "multi-process start needs --coordinator_address=HOST:PORT, --num_processes=N "
                f"(> 1) and --process_id in [0, N); got {address!r}, {num}, {pid}"
            )
        logging.info("jax.distributed: process %d of %d, coordinator %s", pid, num, address)
        jax.distributed.initialize(address, num, int(pid), local_device_ids=local_ids)
        return True
    cluster = detect_cluster(env)
    if cluster is None:
        return False
    if cluster == "slurm" and local_ids is None:
        local_ids = _slurm_local_devices(env)
    logging.info("jax.distributed: initialising from the %s environment", cluster)
    jax.distributed.initialize(local_device_ids=local_ids)
    return True


class HostAllGather:
    """All-gather of short strings between processes, through the distributed key-value store.

    Every process must call `__call__` the same number of times in the same order (the n-th
    calls are matched), each object under a `name` that is the same on every process and unique
    within the run. Host only (no device work), so it can run in an input thread.
    """

    def __init__(self, name: str):
        from jax._src import distributed as jax_distributed  # the coordination service client

        self.client = jax_distributed.global_state.client
        if self.client is None:
            raise RuntimeError("HostAllGather needs jax.distributed.initialize() first")
        self.name = name
        self.count = 0
        self.pid, self.n = jax.process_index(), jax.process_count()

    def _key(self, k: int, pid: int) -> str:
        return f"detr_jax/{self.name}/{k}/{pid}"

    def __call__(self, value: str) -> list[str]:
        """Every process's `value` of this round, in process order."""
        k = self.count
        self.count += 1
        self.client.key_value_set(self._key(k, self.pid), value)
        out = [self.client.blocking_key_value_get(self._key(k, p), _TIMEOUT_MS)
               for p in range(self.n)]
        # Everyone has written round k, so everyone has finished reading round k - 1.
        if k > 0:
            self.client.key_value_delete(self._key(k - 1, self.pid))
        return out


def agree_on_buckets(
    batches: Iterator[dict[str, np.ndarray]], buckets: Any, name: str
) -> Iterator[dict[str, np.ndarray]]:
    """Pads each process's local batches to the bucket fitting the whole global batch.

    Batches follow data/batching.py (`size` [B, 2] holds each image's (h, w)). A no-op with one
    process or one bucket. `name` must be unique per iterator within the run (e.g. "train/0").
    """
    if jax.process_count() == 1 or len(buckets) == 1:
        yield from batches
        return
    gather = HostAllGather(name)
    for batch in batches:
        h, w = (int(v) for v in np.max(batch["size"], axis=0))
        sizes = [tuple(int(v) for v in s.split(",")) for s in gather(f"{h},{w}")]
        hb, wb = choose_bucket(max(s[0] for s in sizes), max(s[1] for s in sizes), buckets)
        yield pad_to_bucket(batch, hb, wb)
