"""Prefetch host batches onto the devices, already sharded for the jitted step.

Each process passes its own share of the global batch (numpy, leading axis = this process's
``B / process_count`` images); :func:`device_prefetch` turns it into global ``jax.Array`` s
sharded by ``sharding`` (``sharding.batch_sharding(mesh)``, ``P(("data", "fsdp"))``: the batch
axis split over every device of every process) with ``jax.make_array_from_process_local_data``,
``size`` batches ahead.  The transfers are asynchronous, so they overlap with the running step.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Sharding


def to_device(batch: dict[str, np.ndarray], sharding: Sharding) -> dict[str, jax.Array]:
    """This process's share of a batch -> global arrays laid out by ``sharding``."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def device_prefetch(
    batches: Iterator[dict[str, np.ndarray]], sharding: Sharding, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Yields ``to_device(batch)`` for each batch, keeping ``size`` batches in flight."""
    queue: collections.deque = collections.deque()
    it = iter(batches)

    def fill() -> None:
        while len(queue) < max(size, 1):
            batch = next(it, None)
            if batch is None:
                return
            queue.append(to_device(batch, sharding))

    fill()
    while queue:
        out = queue.popleft()
        fill()
        yield out
