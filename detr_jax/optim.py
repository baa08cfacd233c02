"""Optimiser: global-norm clipping, then AdamW per parameter group, with a warmup schedule.

Parameter groups are ordered regex rules on the "/"-joined param paths (`backbone/layer1_0/
conv1/kernel`), each `(pattern, value)` with value an lr multiplier or "frozen"; the first rule
whose pattern matches (`re.search`) decides and unmatched params train at lr x 1. "frozen"
params get exactly zero updates (optax.set_to_zero: no gradient step and no weight decay). The
rules come, in this order, from:
1. the `config.freeze` preset (transfer learning): "backbone" freezes `backbone/`, "heads" all
   but the heads, "decoder_and_heads" all but the decoder, the query params (`query_embed`,
   DINO's `tgt_embed` / `label_enc`, anchors) and the heads, "detector" all but DETR's mask
   head (`bbox_attention`, `mask_head`: the original's masks on a frozen detector);
2. the model's parts (`model.param_rules()`: FrozenBatchNorm arrays, `backbone.frozen_stages`);
3. `config.optim.param_rules` (e.g. `[("^backbone/", 0.1)]`, DETR's backbone lr x 0.1).
Every rule of 1 and 3 must match some parameter (a start-up error names the rule otherwise).
`config.freeze_backbone_steps=K` zeroes the `backbone/` updates for the first K steps only
(`transfer.freeze_backbone_until`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.traverse_util
import optax

SCHEDULE_CHOICES = ("cosine", "step", "constant")
FROZEN = "frozen"
# The heads (DETR's `class_embed`, Deformable-style per-layer `class_embed_<i>`, ...) and the
# decoder-side query params (learned queries, DINO's content and label embeddings, anchors).
_HEADS = r"class_embed(_\d+)?/|bbox_embed(_\d+)?/|dense_class_head/"
_QUERIES = ("query_embed|group_query_embed|tgt_embed|label_enc|refpoint_embed|"
            "transformer/ref_point_head")
FREEZE_PRESETS: dict[str, list[tuple[str, str]]] = {
    "none": [],
    "backbone": [("^backbone/", FROZEN)],
    "heads": [(f"^(?!({_HEADS}))", FROZEN)],
    "decoder_and_heads": [(f"^(?!(transformer/decoder_|{_QUERIES}|{_HEADS}))", FROZEN)],
    "detector": [("^(?!(bbox_attention|mask_head)/)", FROZEN)],
}


class ParamRuleError(ValueError):
    """A parameter-group rule that is malformed or matches no parameter."""


def _paths(params: Any) -> list[str]:
    return ["/".join(k) for k in flax.traverse_util.flatten_dict(params)]


def check_rules(rules: Sequence[Sequence[Any]], params: Any, field: str) -> list[str]:
    """One line per bad rule in `rules` (the config at `field`): not a (pattern, value) pair,
    a bad regex or value, or a pattern matching none of the paths of `params`."""
    paths, lines = _paths(params), []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            lines.append(f"{field}[{i}]={rule!r}: a rule is (regex, lr multiplier or 'frozen')")
            continue
        pattern, value = rule
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as e:
            lines.append(f"{field}[{i}]: pattern {pattern!r} is not a regex ({e})")
            continue
        if value != FROZEN and not (isinstance(value, int | float) and value >= 0):
            lines.append(f"{field}[{i}]: value {value!r} must be an lr multiplier >= 0 or "
                         f"'{FROZEN}'")
        if not any(compiled.search(p) for p in paths):
            lines.append(f"{field}[{i}]: pattern {pattern!r} matches no parameter (paths look "
                         f"like {paths[:3]})")
    return lines


def group_label(value: Any) -> str:
    """The optimiser-state label of a rule value: "frozen" or "lr_x<mult>"."""
    return FROZEN if value == FROZEN else f"lr_x{float(value):g}"


def param_labels(params: Any, rules: Sequence[Sequence[Any]]) -> Any:
    """A pytree of group labels shaped like `params` (first matching rule; else "lr_x1")."""
    compiled = [(re.compile(p), group_label(v)) for p, v in rules]

    def label(path: str) -> str:
        return next((lab for pat, lab in compiled if pat.search(path)), group_label(1.0))

    flat = flax.traverse_util.flatten_dict(params)
    return flax.traverse_util.unflatten_dict({k: label("/".join(k)) for k in flat})


def optimizer_rules(config: Any, model: Any, params: Any) -> list[tuple[str, Any]]:
    """The ordered rules of the module docstring for `config` and `model`; raises
    ParamRuleError (one line per bad rule) when a preset or config rule matches nothing."""
    preset = FREEZE_PRESETS[config.freeze]
    config_rules = [tuple(r) for r in config.optim.param_rules]
    lines = check_rules(preset, params, f"freeze={config.freeze!r}")
    lines += check_rules(config_rules, params, "optim.param_rules")
    if lines:
        raise ParamRuleError("\n  ".join(lines))
    return [*preset, *getattr(model, "param_rules", lambda: [])(), *config_rules]


def make_schedule(optim: Any, total_steps: int) -> Callable[[Any], Any]:
    """Linear warmup from 0 to `optim.lr`, then cosine to `lr * final_lr_factor` or a x0.1 drop."""
    lr, warmup = optim.lr, int(optim.warmup_steps)
    if optim.schedule not in SCHEDULE_CHOICES:
        raise ValueError(f"optim.schedule={optim.schedule!r}; choose one of {SCHEDULE_CHOICES}")
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(
            lr, max(total_steps - warmup, 1), alpha=optim.final_lr_factor
        )
    elif optim.schedule == "step":
        decay = optax.piecewise_constant_schedule(
            lr, {max(int(optim.lr_drop_step) - warmup, 0): optim.lr_drop_factor}
        )
    else:
        decay = optax.constant_schedule(lr)
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(
    optim: Any,
    total_steps: int,
    params: Any,
    rules: Sequence[Sequence[Any]] = (),
    freeze_backbone_steps: int = 0,
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """clip -> multi_transform(AdamW per lr multiplier, zero for "frozen"). Returns (tx, lr
    schedule). `params` may be shapes; `rules` as `optimizer_rules` returns them.

    With `freeze_backbone_steps` > 0 the chain is wrapped in `transfer.freeze_backbone_until`.
    """
    schedule = make_schedule(optim, total_steps)

    def adamw(sched):
        return optax.adamw(
            sched, b1=optim.b1, b2=optim.b2, eps=1e-8, weight_decay=optim.weight_decay
        )

    def scaled(mult):
        return schedule if mult == 1.0 else (lambda step: schedule(step) * mult)

    labels = param_labels(params, rules)
    groups: dict[str, optax.GradientTransformation] = {
        group_label(1.0): adamw(schedule), FROZEN: optax.set_to_zero()}
    for _, value in rules:
        if value != FROZEN:
            groups.setdefault(group_label(value), adamw(scaled(float(value))))
    tx = optax.chain(
        optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm > 0 else optax.identity(),
        optax.multi_transform(groups, labels),
    )
    if freeze_backbone_steps > 0:
        from detr_jax.transfer import freeze_backbone_until

        is_backbone = flax.traverse_util.unflatten_dict({
            k: k[0] == "backbone" for k in flax.traverse_util.flatten_dict(params)})
        hold = freeze_backbone_until(int(freeze_backbone_steps), is_backbone)
        tx = optax.chain(hold, tx, freeze_backbone_until(int(freeze_backbone_steps), is_backbone))
    return tx, schedule
