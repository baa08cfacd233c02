"""Deformable DETR's parts and loss on top of any config: `deformable_detr(config, variant)`.

The variants of fundamentalvision/Deformable-DETR: "plain" (one-stage, learned queries with
content, 2-D reference points), "refine" (iterative box refinement) and "two_stage" (refinement
plus encoder proposals as the decoder's queries, "++ two-stage" in the paper). The recipe: 4
levels (C3-C5 and a stride-64 level), 6 + 6 layers, FFN 1024, 300 queries, 4 points, sigmoid
focal loss (alpha 0.25, gamma 2) with the focal matching cost, costs and weights 2 / 5 / 2,
lr 2e-4 with the backbone, sampling offsets and reference points at x0.1, weight decay 1e-4,
clip 0.1. Used by configs/deformable_coco.py and configs/shapes_deformable.py.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("plain", "refine", "two_stage")


def deformable_detr(c: ml_collections.ConfigDict, variant: str = "plain"
                    ) -> ml_collections.ConfigDict:
    """Replaces `c`'s neck, transformer, queries, heads, matcher costs and loss with Deformable
    DETR's (in place; returns `c`). The backbone is kept (its levels follow the neck)."""
    if variant not in VARIANTS:
        raise ValueError(f"Deformable DETR variant {variant!r}; choose one of {VARIANTS}")
    refine, two_stage = variant in ("refine", "two_stage"), variant == "two_stage"
    m = c.model
    m.neck = ml_collections.ConfigDict(dict(  # models/necks/multi_scale.py
        name="multi_scale", levels=("C3", "C4", "C5"), extra_levels=1, num_groups=32))
    m.transformer = ml_collections.ConfigDict(dict(  # models/transformers/deformable.py
        name="deformable", nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=1024,
        dropout=0.1, enc_points=4, dec_points=4, box_refine=refine, two_stage=two_stage,
        remat_sampling=False,  # True: recompute the sampling in the backward (less memory)
        # Sample 2048 queries at a time: 6.3 instead of 10.9 s per R50 train step at 512 px on
        # this CPU, 6.2 instead of 15.9 GiB at 800x1333 (docs/benchmarks.md); 0: all at once.
        sampling_chunk=2048))
    if two_stage:  # models/queries/proposals.py
        m.queries = ml_collections.ConfigDict(dict(name="encoder_proposals", num_queries=300))
    else:  # models/queries/learned.py
        m.queries = ml_collections.ConfigDict(dict(
            name="learned", num_queries=300, init_std=1.0, num_groups=1, with_content=True))
    m.heads = ml_collections.ConfigDict(dict(name="deformable", prior_prob=0.01))
    deformable_loss(c)
    o = c.optim
    o.lr = 2e-4
    rules = [("^backbone/", 0.1), ("sampling_offsets", 0.1)]
    if not two_stage:  # the two-stage model has no reference_points layer
        rules.append(("transformer/reference_points", 0.1))
    o.param_rules = tuple(rules)
    o.weight_decay = 1e-4
    o.clip_norm = 0.1
    return c


def deformable_loss(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Deformable DETR's matching costs and criterion on `c` (in place; returns `c`): the focal
    class cost and focal loss (alpha 0.25, gamma 2), L1 and GIoU, costs and weights 2 / 5 / 2
    (two-stage models add the `_enc` proposal losses with the same weights)."""
    c.matcher.costs = ml_collections.ConfigDict({"focal_class": 2.0, "bbox": 5.0, "giou": 2.0})
    c.loss.terms = ml_collections.ConfigDict({
        "focal_labels": {"alpha": 0.25, "gamma": 2.0}, "boxes": {}, "cardinality": {}})
    c.loss.weights = ml_collections.ConfigDict(
        {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0})
    return c
