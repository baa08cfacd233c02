"""Checkpoints with orbax: save every N steps, keep K, resume from the newest complete one.

A checkpoint holds the train state pytree (params, batch_stats, opt_state, step, rng, and
ema_params when the run keeps an EMA of the params) and JSON metadata (the config, the detr_jax
version, the param and batch-statistics shapes, and `has_ema_params`).

EMA (detr_jax/ema.py): a state whose `ema_params` is None is saved without that entry, so a run
without EMA writes the same tree as before the EMA existed, and such checkpoints resume as
before. A run with EMA that resumes a checkpoint without EMA params starts its EMA from the
restored params (with a warning); a run without EMA that resumes one with EMA params drops them
(with a warning).

Crash safety: orbax writes each step to `<step>.orbax-checkpoint-tmp-*` and renames it when
complete, so a save interrupted by a crash (kill -9, OOM, preemption without grace) is never
listed as a step. On file systems without atomic renames, or when a listed checkpoint cannot be
read, `restore_latest` warns and falls back to the next older one.

Compatibility: a checkpoint whose shapes differ from the model built from the config raises
`CheckpointMismatchError` listing every mismatched path with both shapes; orbax's own restore is
strict as well (no padding or truncation), so nothing is broadcast or truncated silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.traverse_util
import jax
import orbax.checkpoint as ocp
from absl import logging

import detr_jax


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model built from the current config."""


def param_shapes(params: Any) -> dict[str, list[int]]:
    """{'backbone/conv1/kernel': [7, 7, 3, 64], ...} for the metadata and mismatch messages."""
    if not params:
        return {}
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return {k: list(v.shape) for k, v in flat.items()}


def make_manager(workdir: str, every: int, keep: int) -> ocp.CheckpointManager:
    """An orbax manager on `workdir/checkpoints` saving every `every` steps, keeping `keep`.

    Temporary directories left by interrupted saves are deleted when the manager is created.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        save_interval_steps=max(int(every), 1),
        create=True,
        cleanup_tmp_directories=True,  # leftovers of saves interrupted by a crash
    )
    root = workdir if "://" in workdir else os.path.abspath(workdir)  # gs:// stays as is
    return ocp.CheckpointManager(os.path.join(root, "checkpoints"), options=options)


def step_path(manager: ocp.CheckpointManager, step: int) -> str:
    """The directory of checkpoint `step`."""
    return os.path.join(str(manager.directory), str(step))


def save(
    manager: ocp.CheckpointManager, step: int, state: Any, config_json: str, force: bool = False
) -> bool:
    """Saves `state` at `step` if the interval says so (or `force`). Returns whether it saved."""
    meta = {
        "detr_jax_version": detr_jax.__version__,
        "config": config_json,
        "param_shapes": param_shapes(state.params),
        "batch_stats_shapes": param_shapes(state.batch_stats),
        "has_ema_params": getattr(state, "ema_params", None) is not None,
    }
    tree = _saved_tree(state)
    return manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
        force=force,
    )


def _saved_tree(state: Any) -> Any:
    """The tree written for `state`: its fields as a dict, without `ema_params` when None (the
    layout of checkpoints written before the EMA existed)."""
    if not dataclasses.is_dataclass(state):
        return state
    tree = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if tree.get("ema_params", 0) is None:
        del tree["ema_params"]
    return tree


def _shape_diffs(kind: str, saved: dict, expected: dict) -> list[str]:
    return [
        f"{kind} {k}: checkpoint {saved.get(k, 'missing')} vs model {expected.get(k, 'missing')}"
        for k in sorted(set(saved) | set(expected))
        if saved.get(k) != expected.get(k)
    ]


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in str(text).split(".")[:3])
    except ValueError:
        return (0,)


def check_layout(meta: dict, where: str) -> None:
    """Raises CheckpointMismatchError for a checkpoint whose optimiser-state layout predates
    this version's (detr_jax < 0.2 grouped it as backbone / transformer / frozen; 0.2 groups it
    by the parameter rules, `optim.param_rules`). Its params and statistics still load."""
    saved = meta.get("detr_jax_version", "0.0.0")
    if _version(saved) < _version(detr_jax.OPT_STATE_LAYOUT_SINCE):
        workdir = os.path.dirname(os.path.dirname(where.rstrip("/")))
        raise CheckpointMismatchError(
            f"checkpoint {where} was written by detr_jax {saved}, whose optimiser state is "
            f"grouped as backbone/transformer/frozen; detr_jax {detr_jax.__version__} groups it "
            "by the parameter rules (optim.param_rules), and the config fields moved into part "
            "sub-dicts (config_base.LEGACY_FIELDS). Its weights still load: start a fresh "
            f"workdir with --config.init_from={workdir} (params and BatchNorm statistics are "
            "restored, the optimiser state starts anew)."
        )


def check_compatible(meta: dict, target: Any, where: str) -> None:
    """Raises CheckpointMismatchError listing every path whose shape differs from `target`."""
    diffs = _shape_diffs("param", meta.get("param_shapes", {}), param_shapes(target.params))
    if "batch_stats_shapes" in meta:  # absent in older checkpoints
        diffs += _shape_diffs(
            "batch_stats", meta["batch_stats_shapes"], param_shapes(target.batch_stats)
        )
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {where} does not fit this config (saved by detr_jax "
            f"{meta.get('detr_jax_version', '?')}); {len(diffs)} mismatched paths:\n  "
            + "\n  ".join(diffs[:50])
            + ("\n  ..." if len(diffs) > 50 else "")
            + "\nUse the config the checkpoint was trained with (its `config` metadata, or "
            "config.json in the workdir), or a fresh workdir."
        )


def _log_differences(meta: dict, config_json: str | None) -> None:
    if meta.get("detr_jax_version") != detr_jax.__version__:
        logging.warning(
            "checkpoint written by detr_jax %s, running %s",
            meta.get("detr_jax_version"),
            detr_jax.__version__,
        )
    if config_json is None or "config" not in meta:
        return
    old = flax.traverse_util.flatten_dict(json.loads(meta["config"]), sep=".")
    new = flax.traverse_util.flatten_dict(json.loads(config_json), sep=".")
    changed = [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    if changed:
        logging.warning("config differs from the checkpoint's: %s", "; ".join(changed))


def restore_latest(
    manager: ocp.CheckpointManager, target: Any, config_json: str | None = None
) -> tuple[Any, dict] | None:
    """Restores the newest readable checkpoint into the structure, shapes and shardings of `target`.

    Returns (state, metadata), or None when the directory holds no complete checkpoint. A
    checkpoint that cannot be read (half-written by a crash) is skipped with a warning in favour
    of the next older one. Shape mismatches raise CheckpointMismatchError. With `config_json`,
    config fields that changed since the checkpoint are logged.
    """
    manager.reload()
    for step in sorted(manager.all_steps(), reverse=True):
        where = step_path(manager, step)
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = meta["meta"]
        except Exception as e:  # any read failure: incomplete
            logging.warning("skipping unreadable checkpoint %s: %s", where, str(e)[:300])
            continue
        check_layout(meta, where)
        check_compatible(meta, target, where)
        tree, finish = _restore_target(target, bool(meta.get("has_ema_params")), where)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except ValueError as e:
            if any(m in str(e) for m in ("not compatible", "do not match", "partial_restore")):
                raise CheckpointMismatchError(
                    f"checkpoint {where} does not fit the train state built from this config "
                    f"(tree structures differ; saved by detr_jax "
                    f"{meta.get('detr_jax_version', '?')}): {str(e)[:500]}") from e
            logging.warning("skipping unreadable checkpoint %s: %s", where, str(e)[:300])
            continue
        except Exception as e:
            logging.warning("skipping unreadable checkpoint %s: %s", where, str(e)[:300])
            continue
        _log_differences(meta, config_json)
        return finish(restored["state"]), dict(meta, step=step, path=where)
    return None


def _restore_target(target: Any, saved_ema: bool, where: str) -> tuple[Any, Any]:
    """(the tree to restore, a function turning the restored tree into `target`'s type) for a
    checkpoint with (`saved_ema`) or without EMA params; see the module docstring."""
    if not dataclasses.is_dataclass(target):
        return target, lambda tree: tree
    tree = _saved_tree(target)
    want_ema = "ema_params" in tree
    if want_ema and not saved_ema:
        del tree["ema_params"]
    elif saved_ema and not want_ema:
        tree["ema_params"] = target.params  # the same shapes and shardings

    def finish(restored: dict) -> Any:
        restored = dict(restored)
        if want_ema and not saved_ema:
            logging.warning(
                "checkpoint %s holds no EMA params (written without optim.ema_decay): the EMA "
                "starts from its params at step %d", where, int(restored["step"]))
            restored["ema_params"] = jax.tree.map(
                lambda x: x.copy(), restored["params"])  # own buffers: the train step donates
        elif saved_ema and not want_ema:
            logging.warning(
                "checkpoint %s holds EMA params; optim.ema_decay is 0, so they are dropped and "
                "training goes on from its params", where)
            restored.pop("ema_params")
        return target.replace(**restored) if hasattr(target, "replace") else type(target)(
            **restored)

    return tree, finish
