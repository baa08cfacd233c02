"""Parameter checkpoints for `config.init_from`: write (converters) and read (any of ours).

A *params checkpoint* is a directory holding `state/` (an orbax pytree `{"params", "batch_stats"}`)
and `meta.json` (`source`, `config_fields`: the config fields the weights imply, e.g.
`model.backbone.name`, `num_classes`). Training checkpoints (`<workdir>/checkpoints/<step>/state`,
which also hold the optimiser state) are read the same way, so `init_from` accepts:

- a params checkpoint directory (written by `python -m detr_jax.convert`);
- a training workdir (its newest checkpoint), its `checkpoints/` directory, or one step directory.

A training checkpoint of a run with an EMA of the params (`optim.ema_decay` > 0) also holds
`ema_params`; `load_params_checkpoint(path, prefer_ema=True)` returns those in place of `params`
(init_from and prediction ask for them when their config has the EMA on, the weights that run
evaluated with), else the raw params.

Arrays are restored as host numpy arrays; nothing here needs torch.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from detr_jax.config_base import translate_legacy_fields


def save_params_checkpoint(
    path: str, params: dict, meta: dict, batch_stats: dict | None = None
) -> str:
    """Writes `params` (nested or "/"-flat dict of arrays) and `meta` to `path`; returns it."""
    if params and all(isinstance(k, str) and "/" in k for k in params):
        params = flax.traverse_util.unflatten_dict(params, sep="/")
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    tree = {"params": params, "batch_stats": batch_stats or {}}
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(path, "state"), tree, force=True)
    ckpt.wait_until_finished()
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return path


def _numeric_subdirs(path: str) -> list[int]:
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def resolve_state_dir(path: str) -> str:
    """The orbax `state` directory behind any of the accepted `init_from` paths."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init_from={path!r}: no such directory")
    if os.path.isdir(os.path.join(path, "state")):
        return os.path.join(path, "state")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    steps = _numeric_subdirs(path)
    if steps and os.path.isdir(os.path.join(path, str(steps[-1]), "state")):
        return os.path.join(path, str(steps[-1]), "state")
    raise FileNotFoundError(
        f"init_from={path!r} holds no checkpoint: expected a converted checkpoint (state/ and "
        "meta.json), a training workdir, its checkpoints/ directory or a step directory"
    )


def load_params_checkpoint(path: str, prefer_ema: bool = False) -> tuple[dict, dict, dict]:
    """Reads (params, batch_stats, meta) as nested dicts of numpy arrays from an init_from path.

    With `prefer_ema`, a training checkpoint's `ema_params` come back as the params when it has
    them (`meta["params_from"]` says which: "ema_params" or "params").

    `meta["config_fields"]` comes with the current field names, also from checkpoints converted
    before the fields were renamed (`config_base.LEGACY_FIELDS`, e.g. `model.backbone` ->
    `model.backbone.name`)."""
    state_dir = resolve_state_dir(path)
    ckpt = ocp.PyTreeCheckpointer()
    tree = ckpt.metadata(state_dir).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ckpt.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=args))
    meta: dict[str, Any] = {}
    parent = os.path.dirname(state_dir)
    if os.path.exists(os.path.join(parent, "meta.json")):
        with open(os.path.join(parent, "meta.json")) as f:
            meta = json.load(f)
    elif os.path.isdir(os.path.join(parent, "meta")):  # training checkpoint: JsonSave item
        try:
            with open(os.path.join(parent, "meta", "metadata")) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError):
            meta = {}
    if isinstance(meta.get("config_fields"), dict):  # older checkpoints: the old field names
        meta["config_fields"] = translate_legacy_fields(meta["config_fields"])
    key = "ema_params" if prefer_ema and restored.get("ema_params") else "params"
    meta["params_from"] = key
    return restored.get(key, {}), restored.get("batch_stats", {}) or {}, meta
