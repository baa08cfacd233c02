"""The tiny test config for the multi-process tests (tests/core/test_multiprocess.py).

2 processes x 1 CPU device: mesh data=1 x fsdp=2, i.e. the parameters and optimiser state are
split between the two processes and so is every batch (2 images each); two image buckets, so the
processes go through the bucket agreement.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402


def get_config():
    c = tiny_config(
        **{"total_steps": 4, "checkpoint_every": 2, "log_every": 1, "mesh.fsdp": 2,
           # The default matcher: a host callback, which XLA runs on device 0 (process 0).
           "matcher.name": "hungarian_scipy"}
    )
    c.image_buckets = [(96, 96), (128, 128)]
    return c
