"""Mask2Former (default) or MaskFormer, R50, on COCO 2017 panoptic with the papers' recipes.

Run:  python -m detr_jax.main --config=configs/maskformer_coco.py --workdir=runs/m2f_r50 \
          --config.coco.data_dir=/path/to/tensorflow_datasets
`get_config(arg)`: "" or "mask2former" (Mask2Former R50, 50 epochs: published PQ 51.9, mask AP
41.7), "maskformer" (MaskFormer R50: published PQ 46.5). Data: TFDS coco/2017_panoptic prepared
under data_dir (detr_jax/data/tfds_coco_panoptic.py; 133 classes, 80 things then 53 stuff).
Evaluation: box AP and mask AP on the things, PQ / SQ / RQ on things, stuff and all, the COCO
panoptic files in the workdir. Not trained here (no accelerator with COCO in this project); the
architecture is checked against HF transformers (tests/models/test_mask2former_parity.py,
tests/models/test_maskformer_parity.py), and a converted HF checkpoint fits these fields.
"""

import ml_collections

from detr_jax.config_base import base_config
from detr_jax.config_mask2former import mask2former

IMAGES_PER_EPOCH = 118_287


def get_config(arg: str = ""):
    variant = arg or "mask2former"
    if variant not in ("mask2former", "maskformer"):
        raise ValueError(f"configs/maskformer_coco.py:{arg}; choose mask2former or maskformer")
    c = base_config()
    c.dataset = "coco"
    c.coco.name = "coco/2017_panoptic"
    c.num_classes = 133
    c.max_boxes = 96  # segments per image (below the 100 queries)
    # DETR's multi-scale resize and crop (detr_jax/data/transforms.py) and its buckets; the
    # originals' large-scale jitter to 1024x1024 crops is not in the input pipeline.
    c.image_buckets = [(800, 800), (800, 1088), (1088, 800), (1344, 1344)]
    m = c.model
    m.backbone.name = "resnet50"
    m.backbone.norm = "frozen_bn"
    m.hidden_dim = 256
    mask2former(c)  # also data.with_masks and eval.postprocessors (bbox, segm, panoptic)
    if variant == "mask2former":
        # 16 images per batch, 368,750 iterations (50 epochs); the lr drops x0.1 at 89% (the
        # original's first step at 327,778; its second at 355,092 is not modelled).
        m.backbone.frozen_stages = 1  # detectron2's FREEZE_AT 0 keeps the stem's weights
        c.batch_size = 16
        c.total_steps = 368_750
        c.optim.lr_drop_step = 327_778
    else:
        maskformer(c)
    steps_per_epoch = IMAGES_PER_EPOCH // c.batch_size
    c.eval_every = 5 * steps_per_epoch
    c.checkpoint_every = steps_per_epoch // 4
    c.log_every = 100
    c.optim.schedule = "step"
    c.optim.warmup_steps = 10
    return c


def maskformer(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """MaskFormer R50 (maskformer_panoptic_R50_bs64_554k): the transformer-encoder pixel decoder
    (6 DETR encoder layers on C5, FPN to stride 4), a 6-layer DETR decoder, 100 queries; the
    original's sigmoid focal (20) + dice (1) on the full masks, class 1 with no-object 0.1, in
    the loss and (on sampled points) in the matching; batch 64, 554k iterations, AdamW lr 1e-4,
    weight decay 1e-4."""
    m = c.model
    m.backbone.frozen_stages = 0
    m.neck = ml_collections.ConfigDict(dict(  # models/necks/fpn_pixel_decoder.py
        name="maskformer_fpn", conv_dim=256, mask_dim=256, num_groups=32, enc_layers=6,
        nheads=8, dim_feedforward=2048, dropout=0.1, pre_norm=False, input_proj=False,
        mask_padding=False))
    m.transformer = ml_collections.ConfigDict(dict(  # models/transformers/detr.py
        name="detr", nheads=8, enc_layers=0, dec_layers=6, dim_feedforward=2048, dropout=0.1,
        pre_norm=False))
    m.queries = ml_collections.ConfigDict(dict(name="learned", num_queries=100))
    m.heads = ml_collections.ConfigDict(dict(name="maskformer"))
    # The matching's mask terms average over 12,544 uniform points of the stride-4 masks (the
    # original averages over all their pixels; the points estimate the same mean).
    c.matcher.costs = ml_collections.ConfigDict({
        "class": 1.0, "mask_focal": {"weight": 20.0, "num_points": 12544},
        "dice": {"weight": 1.0, "num_points": 12544}})
    c.loss.terms = ml_collections.ConfigDict({
        "labels": {"eos_coef": 0.1, "label_smoothing": 0.0},
        "masks_full": {"alpha": 0.25, "gamma": 2.0}, "cardinality": {}})
    c.loss.weights = ml_collections.ConfigDict(
        {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0})
    c.batch_size = 64
    c.total_steps = 554_000
    c.optim.lr_drop_step = 554_000
    c.optim.weight_decay = 1e-4
    return c
