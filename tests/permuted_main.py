"""`python -m detr_jax.main` in ONE process, fed the global batches in N-process order.

    python tests/permuted_main.py --virtual_processes=2 --config=... --workdir=...

With N processes, process p loads the samples i with i % N == p and the global batch is the
concatenation of the processes' shares: rows (0, N, 2N, ...), then (1, N+1, ...), and so on.
Dropout masks depend on the row, so the single-process reference for a multi-process run must see
the rows in that order; this wrapper permutes every training batch accordingly and then runs the
ordinary entry point (tests/core/test_multiprocess.py).
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from detr_jax import data, main  # noqa: E402

flags.DEFINE_integer("virtual_processes", 1, "Order the batch rows as this many processes do.")


def process_order(batch_size: int, n: int) -> np.ndarray:
    """Row order of an n-process global batch, as indices into the 1-process batch."""
    return np.concatenate([np.arange(p, batch_size, n) for p in range(n)])


def _permuted(real):
    def train_batches(*args, **kwargs):
        for batch in real(*args, **kwargs):
            order = process_order(len(batch["image"]), flags.FLAGS.virtual_processes)
            yield {k: v[order] for k, v in batch.items()}

    return train_batches


if __name__ == "__main__":
    data.train_batches = _permuted(data.train_batches)
    app.run(main.main)
