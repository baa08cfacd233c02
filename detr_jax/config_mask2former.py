"""Mask2Former's parts, matcher and loss on top of any config: `mask2former(config)`.

The recipe of facebookresearch/Mask2Former (R50, COCO panoptic): an MSDeformAttn pixel decoder
(6 encoder layers over C3-C5, the FPN step to C2 for stride-4 mask features of width 256), 9
masked-attention decoder layers (one prediction before the first and one after each: 10 sets
of class and mask logits, all supervised), 100 queries, FFN 2048 (1024 in the pixel decoder),
no dropout; Hungarian matching on class 2, mask BCE 5 and dice 5 over 12,544 points shared by
all pairs of an image; the loss on 12,544 importance-sampled points per matched pair
(oversample 3, importance 0.75) with weights class 2, mask 5, dice 5 and no-object 0.1; AdamW
lr 1e-4, weight decay 0.05, backbone x0.1, clip 0.01. Used by configs/maskformer_coco.py and
configs/shapes_panoptic.py.
"""

from __future__ import annotations

import ml_collections


def mask2former(c: ml_collections.ConfigDict, num_points: int = 12544
                ) -> ml_collections.ConfigDict:
    """Replaces `c`'s neck, transformer, queries, heads, matcher costs, loss and evaluation with
    Mask2Former's (in place; returns `c`). The backbone is kept; it is built with C2-C5 and
    without feature masking (Mask2Former treats padding as image, as the original)."""
    m = c.model
    m.backbone.mask_features = False
    m.neck = ml_collections.ConfigDict(dict(  # models/necks/pixel_decoder.py
        name="mask2former_pixel_decoder", mask_dim=256, levels=("C2", "C3", "C4", "C5"),
        encoder_levels=3, enc_layers=6, nheads=8, enc_points=4, dim_feedforward=1024,
        dropout=0.0, num_groups=32, remat_sampling=False, sampling_chunk=0))
    m.transformer = ml_collections.ConfigDict(dict(  # models/transformers/mask2former.py
        name="mask2former", nheads=8, dec_layers=9, dim_feedforward=2048, dropout=0.0,
        attention_impl="xla", masked_attention=True))
    m.queries = ml_collections.ConfigDict(dict(  # models/queries/learned.py
        name="learned", num_queries=100, init_std=1.0, num_groups=1, with_content=True))
    m.heads = ml_collections.ConfigDict(dict(name="mask2former"))  # models/heads/mask2former.py
    mask2former_loss(c, num_points)
    c.data.with_masks = True
    c.eval.postprocessors = ("bbox", "segm", "panoptic")
    o = c.optim
    o.lr = 1e-4
    o.param_rules = (("^backbone/", 0.1),)
    o.weight_decay = 0.05
    o.clip_norm = 0.01
    return c


def mask2former_loss(c: ml_collections.ConfigDict, num_points: int = 12544
                     ) -> ml_collections.ConfigDict:
    """Mask2Former's matching costs and criterion on `c` (in place; returns `c`): softmax
    class (no-object weight 0.1) + point-sampled sigmoid BCE and dice, costs and weights 2/5/5,
    on every prediction (`aux_loss`)."""
    c.matcher.costs = ml_collections.ConfigDict({
        "class": 2.0, "mask": {"weight": 5.0, "num_points": num_points},
        "dice": {"weight": 5.0, "num_points": num_points}})
    c.loss.aux_loss = True
    c.loss.terms = ml_collections.ConfigDict({
        "labels": {"eos_coef": 0.1, "label_smoothing": 0.0},
        "masks": {"num_points": num_points, "oversample_ratio": 3.0,
                  "importance_sample_ratio": 0.75},
        "cardinality": {}})
    c.loss.weights = ml_collections.ConfigDict(
        {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0})
    return c
