"""DAB-DETR's parts and loss on top of any config: `dab_detr(config)`.

IDEA-Research/DAB-DETR's defaults (main.py): the single-level C5 neck with a sine embedding at
temperature 20, 6 + 6 layers of width 256 with 8 heads, FFN 2048 with PReLU, dropout 0.0, 300
anchor queries (refined by one box head shared by every layer), sigmoid focal loss (alpha 0.25,
gamma 2) with the focal matching cost, costs 2 / 5 / 2 and weights 1 / 5 / 2 (class weight 1,
not Deformable DETR's 2), auxiliary losses, lr 1e-4 with the backbone at x0.1, weight decay
1e-4, clip 0.1; 50 epochs at batch 16 with the lr dropped x0.1 at epoch 40 (configs/dab_coco.py).
The published R50 model reaches 42.2 AP. `random_refpoints_xy` (the repo's coco.sh passes it)
is `model.queries.random_xy` / `freeze_xy` (models/queries/anchors.py).
"""

from __future__ import annotations

import ml_collections

from detr_jax.config_deformable import deformable_loss


def dab_detr(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Replaces `c`'s neck, transformer, queries, heads, matcher costs, loss and lr groups with
    DAB-DETR's (in place; returns `c`). The backbone and the schedule are kept."""
    m = c.model
    m.neck = ml_collections.ConfigDict(dict(  # models/necks/single_level.py
        name="single_level", level="C5", position_embedding="sine", temperature=20.0))
    m.transformer = ml_collections.ConfigDict(dict(  # models/transformers/dab.py
        name="dab", nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048, dropout=0.0,
        attention_dropout=0.0, activation="prelu", keep_query_pos=False, modulate_hw=True,
        pre_norm=False))
    m.queries = ml_collections.ConfigDict(dict(  # models/queries/anchors.py
        name="anchors", num_queries=300, init_std=1.0, random_xy=False, freeze_xy=False,
        num_patterns=0, num_groups=1))
    m.heads = ml_collections.ConfigDict(dict(name="deformable", prior_prob=0.01))
    deformable_loss(c)
    c.loss.weights.loss_ce = 1.0  # DAB-DETR's cls_loss_coef
    c.loss.aux_loss = True
    o = c.optim
    o.lr = 1e-4
    o.param_rules = (("^backbone/", 0.1),)  # lr_backbone 1e-5
    o.weight_decay = 1e-4
    o.clip_norm = 0.1
    return c
