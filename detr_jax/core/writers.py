"""Metric writers: clu's TensorBoard writer when TensorFlow is installed, plain logging otherwise.

Every writer also appends scalars to `workdir/metrics.jsonl` (one JSON object per write, with the
step and the wall time), which the benchmarks read. Only process 0 writes. On a remote workdir
(`gs://...`, which cannot append) the lines are appended in batches: every `REMOTE_EVERY_S`
seconds and on `flush()`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from detr_jax.core import fileio

REMOTE_EVERY_S = 120.0


class _LoggingWriter:
    """The fallback when clu.metric_writers cannot be imported (no TensorFlow/tensorboard)."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        logging.info("[%d] %s", step, ", ".join(f"{k}={float(v):.5g}" for k, v in scalars.items()))

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        logging.info("[%d] images: %s", step, {k: np.shape(v) for k, v in images.items()})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("hparams: %s", dict(hparams))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MetricWriter:
    """Scalars and images to TensorBoard (or logs) plus `metrics.jsonl`."""

    def __init__(self, workdir: str, use_tensorboard: bool = True):
        self._active = jax.process_index() == 0
        self._start = time.time()
        self._jsonl = os.path.join(workdir, "metrics.jsonl") if self._active else None
        self._remote = fileio.is_remote(workdir)
        self._pending: list[str] = []  # remote workdir: lines not written yet
        self._last_append = time.time()
        self._writer: Any = _LoggingWriter()
        if self._active and use_tensorboard:
            try:
                from clu import metric_writers  # imports TensorFlow

                self._writer = metric_writers.create_default_writer(workdir, asynchronous=False)
            except ImportError as e:  # pragma: no cover - depends on the installation
                logging.warning("TensorBoard writer unavailable (%s); logging only.", e)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        if not self._active:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._writer.write_scalars(step, clean)
        self._pending.append(
            json.dumps({"step": step, "time": time.time() - self._start, **clean}) + "\n"
        )
        if not self._remote or time.time() - self._last_append > REMOTE_EVERY_S:
            self._append_pending()

    def _append_pending(self) -> None:
        if self._pending:
            fileio.append_text(self._jsonl, "".join(self._pending))
            self._pending = []
        self._last_append = time.time()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """images: name -> uint8 [H, W, 3] (or [N, H, W, 3])."""
        if not self._active:
            return
        batched = {k: (v[None] if v.ndim == 3 else v) for k, v in images.items()}
        self._writer.write_images(step, batched)

    def progress_hook(self, total_steps: int, every_secs: float = 60.0):
        """clu's ReportProgress (steps/s and ETA) when clu imports, else a no-op; call per step."""
        try:
            from clu import periodic_actions  # imports TensorFlow
        except ImportError:  # pragma: no cover - depends on the installation
            return lambda step: None
        writer = self._writer if not isinstance(self._writer, _LoggingWriter) else None
        return periodic_actions.ReportProgress(
            num_train_steps=total_steps, writer=writer, every_secs=every_secs
        )

    def flush(self) -> None:
        if self._active:
            self._append_pending()
            self._writer.flush()

    def close(self) -> None:
        if self._active:
            self._append_pending()
            self._writer.close()
