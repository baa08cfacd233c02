"""Transfer learning: start a run from pretrained weights (`config.init_from`, `config.init_mode`).

`init_from` is a params checkpoint written by `python -m detr_jax.convert`, or one of our training
workdirs / checkpoint directories (see `detr_jax/pretrained.py`). Modes:

- "all": every param whose path and shape match is taken. The class head (`class_embed`, or
  the per-layer `class_embed_<i>` of Deformable DETR / DINO / DAB) is left at its fresh
  initialisation when `num_classes` differs, which re-initialises all `num_classes (+ 1)`
  logits including the no-object one (likewise the optional `dense_class_head` and DINO's
  `label_enc`). Any other shape mismatch is an error
  listing the paths (e.g. a different `hidden_dim` or `num_queries`).
- "backbone": only `backbone/...` is taken (everything else keeps its fresh initialisation).

BatchNorm names are adapted between our frozen BN (params `weight`, `bias`, `running_mean`,
`running_var`) and flax BatchNorm (params `scale`, `bias`; batch_stats `mean`, `var`), so a
converted (frozen-BN) backbone can initialise a `model.backbone.norm="bn"` model and vice versa.
A resumed run (the workdir already holds a checkpoint) ignores `init_from`.
"""

from __future__ import annotations

import re
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from detr_jax.pretrained import load_params_checkpoint

INIT_MODES = ("all", "backbone")
FREEZE_CHOICES = ("none", "backbone", "heads", "decoder_and_heads", "detector")
# Params sized by num_classes (DETR's and the per-layer Deformable-style class heads, the dense
# head, DINO's denoising label embedding): re-initialised when it differs.
CLASS_HEADS = re.compile(r"^(class_embed(_\d+)?|dense_class_head|label_enc)/")

# (frozen BN param, flax BatchNorm collection, flax BatchNorm name)
_BN_NAMES = (
    ("weight", "params", "scale"),
    ("bias", "params", "bias"),
    ("running_mean", "batch_stats", "mean"),
    ("running_var", "batch_stats", "var"),
)


class InitFromError(ValueError):
    """init_from weights that do not fit the configured model."""


def config_problems(config: Any) -> list[str]:
    """One line per invalid transfer-learning field (used by config_validation)."""
    errors = []
    if config.init_mode not in INIT_MODES:
        errors.append(f"init_mode={config.init_mode!r}: choose one of {INIT_MODES}")
    if config.freeze not in FREEZE_CHOICES:
        errors.append(f"freeze={config.freeze!r}: choose one of {FREEZE_CHOICES}")
    k = config.freeze_backbone_steps
    if not (isinstance(k, int) and k >= 0):
        errors.append(f"freeze_backbone_steps={k!r} must be an integer >= 0")
    return errors


def _flat(tree: Any) -> dict[str, Any]:
    return flax.traverse_util.flatten_dict(tree, sep="/") if tree else {}


def _adapt_norms(src_params: dict, src_stats: dict, target: dict[str, dict]) -> tuple[dict, dict]:
    """Renames the source's BatchNorm arrays where the target uses the other norm kind."""
    src = {"params": dict(src_params), "batch_stats": dict(src_stats)}
    frozen_modules = {k.rsplit("/", 1)[0] for k in src["params"] if k.endswith("/running_mean")}
    bn_modules = {k.rsplit("/", 1)[0] for k in src["batch_stats"] if k.endswith("/mean")}
    for module in frozen_modules:  # frozen BN -> flax BatchNorm
        if f"{module}/running_mean" in target["params"]:
            continue
        for frozen_leaf, coll, bn_leaf in _BN_NAMES:
            if f"{module}/{bn_leaf}" in target[coll]:
                src[coll][f"{module}/{bn_leaf}"] = src["params"].pop(f"{module}/{frozen_leaf}")
    for module in bn_modules:  # flax BatchNorm -> frozen BN
        if f"{module}/running_mean" not in target["params"]:
            continue
        for frozen_leaf, coll, bn_leaf in _BN_NAMES:
            if f"{module}/{bn_leaf}" in src[coll]:
                src["params"][f"{module}/{frozen_leaf}"] = src[coll].pop(f"{module}/{bn_leaf}")
    return src["params"], src["batch_stats"]


def merge_pretrained(
    params: Any, batch_stats: Any, src_params: Any, src_batch_stats: Any, mode: str
) -> tuple[Any, Any, dict[str, list[str]]]:
    """Returns (params, batch_stats, report) with the source's arrays put into the target trees.

    report: `loaded`, `reinitialised` (class head, different num_classes), `kept` (target paths
    the source lacks), `ignored` (source paths the target lacks).
    """
    if mode not in INIT_MODES:
        raise InitFromError(f"init_mode={mode!r}: choose one of {INIT_MODES}")
    target = {"params": _flat(params), "batch_stats": _flat(batch_stats)}
    src_p, src_s = _adapt_norms(_flat(src_params), _flat(src_batch_stats), target)
    source = {"params": src_p, "batch_stats": src_s}
    report: dict[str, list[str]] = {"loaded": [], "reinitialised": [], "kept": [], "ignored": []}
    mismatched = []
    out = {}
    for coll in ("params", "batch_stats"):
        new = dict(target[coll])
        for key, value in target[coll].items():
            if mode == "backbone" and not key.startswith("backbone/"):
                continue
            if key not in source[coll]:
                report["kept"].append(key)
                continue
            src = np.asarray(source[coll][key])
            if src.shape != tuple(value.shape):
                if CLASS_HEADS.match(key):
                    report["reinitialised"].append(key)
                    continue
                mismatched.append(f"{key}: checkpoint {src.shape} vs model {tuple(value.shape)}")
                continue
            # Host numpy: every process holds the same values, which device_put can then place
            # on a multi-process mesh (a single-device jax.Array could not be).
            new[key] = np.asarray(src, dtype=value.dtype)
            report["loaded"].append(key)
        scope = (lambda k: k.startswith("backbone/")) if mode == "backbone" else (lambda k: True)
        report["ignored"] += [k for k in source[coll] if k not in target[coll] and scope(k)]
        out[coll] = flax.traverse_util.unflatten_dict(new, sep="/") if new else {}
    if mismatched:
        raise InitFromError(
            f"init_from weights do not fit the model ({len(mismatched)} paths; only the class "
            "head may differ, when num_classes does):\n  " + "\n  ".join(mismatched)
        )
    if not report["loaded"]:
        raise InitFromError("init_from: no parameter of the model was found in the checkpoint")
    return out["params"], out["batch_stats"], report


def _plain(value: Any) -> Any:
    """A config value as meta.json holds it (sub-dicts as dicts, tuples as lists)."""
    value = value.to_dict() if hasattr(value, "to_dict") else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def _warn_config_differences(config: Any, meta: dict) -> None:
    fields = meta.get("config_fields", {})
    diffs = []
    for key, value in fields.items():
        node = config
        for part in key.split("."):
            node = node[part] if part in node else None
            if node is None:
                break
        if key != "num_classes" and node is not None and _plain(node) != _plain(value):
            diffs.append(f"{key}: checkpoint {value!r} vs config {node!r}")
    if diffs:
        logging.warning("init_from: the config differs from the weights' own: %s", "; ".join(diffs))


def init_from_checkpoint(config: Any, state: Any) -> Any:
    """`state` with params (and BatchNorm statistics) from `config.init_from`, if set.

    With the EMA on (`optim.ema_decay` > 0) the params come from a training checkpoint's EMA
    params when it has them, and the state's EMA starts from the loaded params."""
    if not config.init_from:
        return state
    has_ema = getattr(state, "ema_params", None) is not None
    src_params, src_stats, meta = load_params_checkpoint(config.init_from, prefer_ema=has_ema)
    _warn_config_differences(config, meta)
    params, stats, report = merge_pretrained(
        state.params, state.batch_stats, src_params, src_stats, config.init_mode
    )
    logging.info(
        "init_from %s (mode %s, %s): %d arrays loaded, %d re-initialised %s, %d kept fresh %s, "
        "%d ignored %s",
        config.init_from,
        config.init_mode,
        meta["params_from"],
        len(report["loaded"]),
        len(report["reinitialised"]),
        report["reinitialised"],
        len(report["kept"]),
        report["kept"][:10],
        len(report["ignored"]),
        report["ignored"][:10],
    )
    state = state.replace(params=params, batch_stats=stats if state.batch_stats else {})
    if has_ema:  # own buffers (the train step donates the state)
        state = state.replace(ema_params=jax.tree.map(lambda x: x.copy(), params))
    return state


def freeze_backbone_until(steps: int, is_backbone: Any):
    """An optax transformation zeroing the updates of the leaves `is_backbone` (a bool pytree
    shaped like the params) marks while its
    step count is below `steps` (put it first, on the gradients, and last, on the updates, so
    that neither clipping, Adam's moments nor weight decay touch the frozen backbone)."""
    import optax

    def init(params):
        del params
        return {"count": jnp.zeros([], jnp.int32)}

    def update(updates, state, params=None):
        del params
        frozen = state["count"] < steps
        updates = jax.tree.map(
            lambda u, bb: jnp.where(frozen & bb, jnp.zeros_like(u), u) if bb else u,
            updates,
            is_backbone,
        )
        return updates, {"count": state["count"] + 1}

    return optax.GradientTransformation(init, update)
