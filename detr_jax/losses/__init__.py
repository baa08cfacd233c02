"""Losses: the set criterion and its named terms, built from the config: `build_criterion`.

`config.loss.terms` maps term names (below) to their settings; `config.loss.weights` maps the
losses they return to weights. Adding a term: its function in its own file (signature
`fn(outputs, batch, targets, **settings) -> {loss name: [L] or scalar}`), one line here, its
config and its test.

Softmax heads ([.., C+1] logits) use `labels`, sigmoid heads ([.., C], Deformable DETR) use
`focal_labels` (with the `focal_class` matching cost); `boxes` and `cardinality` serve both.
With two-stage encoder proposals (`outputs["enc_outputs"]`) every matched term also returns
`<loss>_enc` (criterion.py). `denoising` supervises DINO's denoising queries
(`outputs["dn_outputs"]`, `dn_meta`) by their fixed ground truth: `loss_ce_dn`, `loss_bbox_dn`,
`loss_giou_dn` (denoising.py). `masks` (Mask2Former, on sampled points) and `masks_full`
(DETR segm, full masks) return `loss_mask` and `loss_dice` from `outputs["pred_masks"]` and
`batch["masks"]` (masks.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

from detr_jax.losses.boxes import boxes_term
from detr_jax.losses.criterion import Criterion
from detr_jax.losses.denoising import DN_LOSSES, denoising_term
from detr_jax.losses.dense import dense_term
from detr_jax.losses.focal import focal_labels_term
from detr_jax.losses.labels import cardinality_term, labels_term
from detr_jax.losses.masks import MASK_LOSSES, masks_full_term, masks_term
from detr_jax.losses.targets import Targets
from detr_jax.matching import get_matcher


class LossTerm(NamedTuple):
    """A registered term: its function, whether it is applied per decoder layer to matched
    targets, the names of what it returns (checked against `loss.weights` at start-up), and
    whether it reads `pred_masks` (skipped on encoder proposals without masks)."""

    fn: Callable
    needs_matching: bool
    outputs: tuple[str, ...]
    needs_masks: bool = False


LOSS_TERMS: dict[str, LossTerm] = {
    "labels": LossTerm(labels_term, True, ("loss_ce", "class_error")),
    "focal_labels": LossTerm(focal_labels_term, True, ("loss_ce", "class_error")),
    "boxes": LossTerm(boxes_term, True, ("loss_bbox", "loss_giou")),
    "cardinality": LossTerm(cardinality_term, True, ("cardinality_error",)),
    "dense": LossTerm(dense_term, False, ("loss_dense",)),
    "denoising": LossTerm(denoising_term, False, DN_LOSSES),
    "masks": LossTerm(masks_term, True, MASK_LOSSES, needs_masks=True),
    "masks_full": LossTerm(masks_full_term, True, MASK_LOSSES, needs_masks=True),
}


def term_settings(name: str) -> tuple[str, ...]:
    """The keyword settings term `name` accepts (its keyword-only parameters)."""
    params = inspect.signature(LOSS_TERMS[name].fn).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def loss_problems(config: Any) -> list[str]:
    """One line per problem with `config.loss` (unknown terms or settings, weights no term
    produces, a dense term without the dense head)."""
    ls, lines = config.loss, []
    produced: set[str] = set()
    for name, settings in ls.terms.items():
        if name not in LOSS_TERMS:
            lines.append(f"loss.terms.{name}: unknown term; choose from {tuple(LOSS_TERMS)}")
            continue
        produced |= set(LOSS_TERMS[name].outputs)
        accepted = term_settings(name)
        lines += [f"loss.terms.{name}.{k}: not a setting of {name}; its settings: {accepted}"
                  for k in settings if k not in accepted]
    lines += [f"loss.weights.{k}: no term in loss.terms produces it (they produce "
              f"{sorted(produced)})" for k in ls.weights if k not in produced]
    heads = config.model.get("heads", {})
    if "dense" in ls.terms and not heads.get("dense_aux", False):
        lines.append("loss.terms.dense needs model.heads.dense_aux=True")
    lines += _activation_problems(config, heads)
    return lines


# Class terms and costs that read softmax (C + 1, no-object last) or sigmoid (C) logits.
_SOFTMAX_ONLY = {"loss.terms": "labels", "matcher.costs": "class"}
_SIGMOID_ONLY = {"loss.terms": "focal_labels", "matcher.costs": "focal_class"}


def _activation_problems(config: Any, heads: Any) -> list[str]:
    """Class terms / costs that do not fit the heads' logits (softmax vs sigmoid heads)."""
    from detr_jax.models.heads import HEADS  # local: the losses do not need the models

    factory = HEADS.get(heads.get("name", ""))
    while hasattr(factory, "func"):  # functools.partial
        factory = factory.func
    activation = getattr(factory, "class_activation", "softmax")
    wrong = _SOFTMAX_ONLY if activation == "sigmoid" else _SIGMOID_ONLY
    right = _SIGMOID_ONLY if activation == "sigmoid" else _SOFTMAX_ONLY
    found = {"loss.terms": config.loss.terms, "matcher.costs": config.matcher.costs}
    return [f"{field}.{name} does not fit model.heads.name={heads.get('name')!r} ({activation} "
            f"class logits): use {field}.{right[field]}"
            for field, name in wrong.items() if name in found[field]]


def build_criterion(config: Any) -> Criterion:
    """The criterion of `config.loss` with the matcher of `config.matcher`."""
    mt = config.matcher
    settings = {k: v for k, v in mt.items() if k not in ("name", "costs")}
    matcher = get_matcher(mt.name, **settings)
    ls = config.loss
    terms = {name: dict(s) for name, s in ls.terms.items()}
    costs = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in mt.costs.items()}
    return Criterion(terms, dict(ls.weights), LOSS_TERMS, matcher, costs, ls.aux_loss,
                     num_classes=config.num_classes,
                     encoder_class_agnostic=ls.get("encoder_class_agnostic", True))


__all__ = ["LOSS_TERMS", "Criterion", "LossTerm", "Targets", "build_criterion", "loss_problems",
           "term_settings"]
