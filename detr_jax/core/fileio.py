"""Workdir files on a local disk or on object storage (``gs://bucket/...``, as on TPU pods).

Local paths go through ``os`` and ``open`` as always. Paths with a scheme (``gs://``, ``s3://``)
go through ``etils.epath``, the path library orbax uses for its checkpoints (TensorFlow's gfile
serves ``gs://`` when TensorFlow is installed). Object stores cannot append, so `append_text`
rewrites the object; `MetricWriter` therefore batches its appends on remote workdirs.
"""

from __future__ import annotations

import os
from typing import IO, Any


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def _epath(path: str | os.PathLike) -> Any:
    from etils import epath

    return epath.Path(os.fspath(path))


def makedirs(path: str | os.PathLike) -> None:
    if is_remote(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def open_file(path: str | os.PathLike, mode: str = "r") -> IO:
    """``open(path, mode)`` for local and remote paths (modes r, w, rb, wb)."""
    return _epath(path).open(mode) if is_remote(path) else open(path, mode)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Appends `text` (remote: reads the object and writes it back with `text` added)."""
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(text)
        return
    p = _epath(path)
    p.write_text((p.read_text() if p.exists() else "") + text)
