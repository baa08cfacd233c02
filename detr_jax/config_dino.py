"""The DINO-style detector's parts and loss on top of any config: `dino_detr(config, variant)`.

Variants, each adding to the one before (the ablation of docs/benchmarks.md, "DINO on shapes"):
- "dn": DN-Deformable-DETR: two-stage Deformable DETR with an anchor decoder and DN-DETR's
  denoising (positives only), pure query selection (content from the proposals), references
  gradient-stopped, the first class logit selects;
- "dino": DINO: contrastive denoising, mixed query selection (learned content), selection by
  the best class logit, look-forward-twice, and the proposals' loss with the real labels
  (DINO's interm loss; "dn" keeps Deformable DETR's class-agnostic one);
- "dino_groups": + Group DETR's one-to-many groups (`groups` of them, training only).

DINO-4scale's published recipe (IDEA-Research/DINO, config/DINO/DINO_4scale.py, 49.0 AP in 12
epochs with R50): 4 levels, 6 + 6 layers, FFN 2048, dropout 0, 900 queries (300 detections
kept per image in evaluation), `dn_number` 100, label noise 0.5, box noise 1.0 (the config file
says 0.4; its training scripts pass 1.0), focal loss with class / L1 / GIoU costs 2 / 5 / 2 and
weights 1 / 5 / 2 on the matched, denoising and proposal outputs, lr 1e-4 with the backbone,
sampling offsets and reference points at x0.1, weight decay 1e-4, clip 0.1, batch 16.
"""

from __future__ import annotations

import ml_collections

from detr_jax.config_deformable import deformable_detr

VARIANTS = ("dn", "dino", "dino_groups")


def dino_detr(c: ml_collections.ConfigDict, variant: str = "dino", groups: int = 3
              ) -> ml_collections.ConfigDict:
    """Replaces `c`'s neck, transformer, queries, heads, costs, loss and lr groups with the
    DINO-style detector's (in place; returns `c`). The backbone is kept."""
    if variant not in VARIANTS:
        raise ValueError(f"DINO variant {variant!r}; choose one of {VARIANTS}")
    dino = variant != "dn"
    deformable_detr(c, "two_stage")  # the neck, the encoder and the sigmoid heads
    m = c.model
    t = m.transformer
    t.name = "dino"  # models/transformers/dino.py
    del t.box_refine, t.two_stage
    t.dim_feedforward = 2048
    t.dropout = 0.0
    t.select_by = "max" if dino else "first"
    t.look_forward_twice = dino
    t.share_heads = True
    m.queries = ml_collections.ConfigDict(dict(  # models/queries/dino.py
        name="dino", num_queries=900, mixed=dino, dn_number=100, contrastive=dino,
        label_noise_ratio=0.5, box_noise_scale=1.0, max_objects=0,
        num_groups=groups if variant == "dino_groups" else 1, init_std=1.0))
    c.loss.terms.denoising = {"alpha": 0.25, "gamma": 2.0}
    c.loss.encoder_class_agnostic = not dino
    w = c.loss.weights
    w.loss_ce = 1.0
    w.loss_ce_dn, w.loss_bbox_dn, w.loss_giou_dn = 1.0, 5.0, 2.0
    c.eval.top_k = 300
    c.optim.lr = 1e-4
    c.optim.param_rules = (("^backbone/", 0.1), ("sampling_offsets", 0.1))
    return c
