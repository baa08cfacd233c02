"""Graceful stop on SIGTERM / SIGINT: a flag set by a signal handler, read at step boundaries.

Cloud schedulers (GKE, Slurm, spot/preemptible VMs) send SIGTERM some seconds before they kill a
job; Ctrl-C sends SIGINT. `StopSignal` turns either into a flag; the training loop checks
`should_stop()` after each step, saves a checkpoint at that step and returns, so the next start
resumes there. A second SIGINT falls through to the previous handler (KeyboardInterrupt), for a
user who really wants out now.

With several processes the signal reaches them at different times (or only some of them), yet
they must all stop after the same step, or the checkpoint save (a collective) would hang.
`should_stop()` therefore combines the local flags of all processes with
`jax.experimental.multihost_utils.process_allgather` and stops everywhere when any process has
seen a signal. Every process calls it at the same step boundaries (every `sync_every` steps), so
they all reach the same answer at the same step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np
from absl import logging

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """Installs SIGTERM/SIGINT handlers (context manager) and answers `should_stop(step)`."""

    def __init__(self, sync_every: int = 1):
        self.sync_every = max(int(sync_every), 1)
        self.received: int | None = None  # the signal number, once one arrived
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            previous = self._previous.get(signum)
            if callable(previous):
                previous(signum, frame)  # usually default_int_handler: KeyboardInterrupt
                return
            raise KeyboardInterrupt
        self.received = signum
        logging.warning(
            "received %s: stopping at the next step boundary with a checkpoint",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            logging.warning("not in the main thread: SIGTERM/SIGINT will not stop training cleanly")
            return self
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        logging.info("SIGTERM/SIGINT will stop training at the next step with a checkpoint")
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self, step: int) -> bool:
        """Whether to stop after `step`; the same answer on every process."""
        local = self.received is not None
        if jax.process_count() == 1:
            return local
        if step % self.sync_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
        return bool(np.max(flags))
