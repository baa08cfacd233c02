"""Checkpoints with orbax: save every N steps, keep K, resume from the newest complete one.

A checkpoint holds the train state pytree (params, batch_stats, opt_state, step, rng) and JSON
metadata (the config, the detr_jax version and the param-tree shapes). orbax writes each step to a
temporary directory and renames it when complete, so a save interrupted by a crash is never listed
as a step and restarting uses the last complete one.
"""

from __future__ import annotations

import os
from typing import Any

import flax.traverse_util
import jax
import orbax.checkpoint as ocp

import detr_jax


def param_shapes(params: Any) -> dict[str, list[int]]:
    """{'backbone/conv1/kernel': [7, 7, 3, 64], ...} for the metadata and mismatch messages."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return {k: list(v.shape) for k, v in flat.items()}


def make_manager(workdir: str, every: int, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=max(int(every), 1), create=True
    )
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
    )


def save(
    manager: ocp.CheckpointManager, step: int, state: Any, config_json: str, force: bool = False
) -> bool:
    """Saves `state` at `step` if the interval says so (or `force`). Returns whether it saved."""
    meta = {
        "detr_jax_version": detr_jax.__version__,
        "config": config_json,
        "param_shapes": param_shapes(state.params),
    }
    return manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=force,
    )


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[Any, dict] | None:
    """Restores the newest checkpoint into the structure, shapes and shardings of `target`.

    Returns (state, metadata) or None when the directory holds no complete checkpoint. A checkpoint
    whose parameter shapes differ from `target` raises ValueError listing the mismatched paths.
    """
    step = manager.latest_step()
    if step is None:
        return None
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    expected = param_shapes(target.params)
    saved = meta.get("param_shapes", {})
    diffs = [
        f"{k}: checkpoint {saved.get(k)} vs model {expected.get(k)}"
        for k in sorted(set(saved) | set(expected))
        if saved.get(k) != expected.get(k)
    ]
    if diffs:
        raise ValueError(
            f"checkpoint step {step} in {manager.directory} does not fit this config; "
            f"mismatched params ({len(diffs)}):\n  " + "\n  ".join(diffs[:50])
        )
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    return restored["state"], meta
