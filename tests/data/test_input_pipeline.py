"""Input plumbing: device prefetch with the data sharding; truncated boxes are counted."""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from detr_jax.data import train_batches
from detr_jax.data.prefetch import device_prefetch


def test_device_prefetch_keeps_order_values_and_sharding():
    n = jax.device_count()
    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P("data"))
    pulled = []

    def source():
        for i in range(5):
            pulled.append(i)
            yield {"image": np.full((n, 4, 4, 3), i, np.float32), "id": np.arange(n) + i}

    it = device_prefetch(source(), sharding, size=2)
    first = next(it)
    assert len(pulled) == 3  # the one returned + two in flight, not the whole stream
    out = [first] + list(it)
    assert [int(b["image"][0, 0, 0, 0]) for b in out] == [0, 1, 2, 3, 4]
    assert all(b["image"].sharding == sharding for b in out)
    np.testing.assert_array_equal(np.asarray(out[3]["id"]), np.arange(n) + 3)


class _Crowded:
    """A dataset whose every image has 5 boxes (more than max_boxes=3)."""

    def train_samples(self, start_index, process_index, process_count):
        i = start_index + process_index
        while True:
            yield {"image": np.zeros((8, 8, 3), np.uint8), "image_id": i,
                   "boxes": np.tile(np.array([[0, 0, 4, 4]], np.float32), (5, 1)),
                   "labels": np.zeros(5, np.int32)}
            i += process_count


def test_truncated_boxes_are_counted_and_logged(caplog):
    with caplog.at_level(logging.WARNING):
        it = train_batches(_Crowded(), global_batch_size=2, start_step=0, buckets=[(8, 8)],
                           max_boxes=3)
        batch = next(it)
    assert batch["box_valid"].sum() == 6
    assert "4 boxes beyond max_boxes truncated" in caplog.text
