"""Optimiser: global-norm clipping, then AdamW with a warmup schedule; backbone lr x mult.

Parameters are labelled by their path in the param tree:
- "frozen": FrozenBatchNorm arrays and the stages frozen by `model.backbone_frozen_stages`; they get
  exactly zero updates (optax.set_to_zero: no gradient step and no weight decay).
- "backbone": the rest of `backbone/...`, lr x `optim.backbone_lr_mult`.
- "transformer": everything else (projection, transformer, queries, heads).

Transfer learning (`config.freeze`) labels more of the model "frozen": "backbone" (all of it),
"heads" (all but `class_embed` and `bbox_embed`), "decoder_and_heads" (all but the decoder,
`query_embed` and the heads). `config.freeze_backbone_steps=K` zeroes the backbone's updates for
the first K steps only (`transfer.freeze_backbone_until`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.traverse_util
import optax

SCHEDULE_CHOICES = ("cosine", "step", "constant")

_STAGE_PREFIXES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def frozen_stage_prefixes(frozen_stages: int) -> tuple[str, ...]:
    """Top-level backbone module prefixes frozen by `frozen_stages` (1 = stem, 2 = +layer1, ...)."""
    n = {0: 0, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6}[int(frozen_stages)]
    return _STAGE_PREFIXES[:n]


_HEADS = ("class_embed", "bbox_embed", "dense_class_head")
_TRAINED_BY_FREEZE = {
    "none": None,
    "backbone": ("input_proj", "position_embedding", "transformer", "query_embed", *_HEADS),
    "heads": _HEADS,
    "decoder_and_heads": ("transformer/decoder_", "query_embed", *_HEADS),
}


def param_labels(params: Any, frozen_stages: int = 0, freeze: str = "none") -> Any:
    """Returns a pytree of labels ("frozen" / "backbone" / "transformer") shaped like params.

    `freeze` (see the module docstring) labels every param outside its trained set "frozen".
    """
    trained = _TRAINED_BY_FREEZE[freeze]
    frozen_prefixes = frozen_stage_prefixes(frozen_stages)
    flat = flax.traverse_util.flatten_dict(params)
    # FrozenBatchNorm modules are the ones holding running statistics among their params
    # (trainable flax BatchNorm keeps them in `batch_stats`, GroupNorm has none).
    frozen_bn_modules = {k[:-1] for k in flat if k[-1] == "running_mean"}

    def label(path: tuple[str, ...]) -> str:
        if trained is not None and not "/".join(path).startswith(trained):
            return "frozen"
        if path[0] != "backbone":
            return "transformer"
        if path[:-1] in frozen_bn_modules:
            return "frozen"
        top = path[1]
        if any(top == p or top.startswith(p + "_") for p in frozen_prefixes):
            return "frozen"
        return "backbone"

    return flax.traverse_util.unflatten_dict({k: label(k) for k in flat})


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
    frozen_stages: int = 0,
    freeze: str = "none",
    freeze_backbone_steps: int = 0,
) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """Builds clip -> multi_transform(AdamW per group). Returns (tx, lr schedule).

    With `freeze_backbone_steps` > 0 the chain is wrapped in `transfer.freeze_backbone_until`.
    """
    schedule = make_schedule(optim, total_steps)
    mult = optim.backbone_lr_mult

    def adamw(sched):
        return optax.adamw(
            sched, b1=optim.b1, b2=optim.b2, eps=1e-8, weight_decay=optim.weight_decay
        )

    labels = param_labels(params, frozen_stages, freeze)
    tx = optax.chain(
        optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm > 0 else optax.identity(),
        optax.multi_transform(
            {
                "transformer": adamw(schedule),
                "backbone": adamw(lambda step: schedule(step) * mult),
                "frozen": optax.set_to_zero(),
            },
            labels,
        ),
    )
    if freeze_backbone_steps > 0:
        from detr_jax.transfer import freeze_backbone_until

        hold = freeze_backbone_until(int(freeze_backbone_steps), labels)
        tx = optax.chain(hold, tx, freeze_backbone_until(int(freeze_backbone_steps), labels))
    return tx, schedule
