"""DETR R50 panoptic (the original's DETRsegm) on COCO 2017 panoptic, in the paper's two stages.

Run:  python -m detr_jax.main --config=configs/detr_panoptic_coco.py:boxes --workdir=runs/p_box \
          --config.coco.data_dir=/path/to/tensorflow_datasets
      python -m detr_jax.main --config=configs/detr_panoptic_coco.py:masks --workdir=runs/p_mask \
          --config.init_from=runs/p_box --config.coco.data_dir=...
`get_config(arg)`: "boxes" trains the detector on the panoptic targets (things and stuff as
boxes, 250 class slots as the original, 300 epochs like configs/coco.py); "masks" (default)
adds DETR's mask head (multi-head attention maps of the last decoder layer over the encoder
memory, an FPN-style conv head over C2-C4; models/heads/detr_mask.py) and trains only it
(`freeze="detector"`) for 25 epochs with sigmoid focal + dice on the full masks, lr drop at
epoch 20. Published: PQ 43.4 (DETR R50). The original panoptic checkpoints load through
`python -m detr_jax.convert` (tests/models/test_detr_segm_parity.py: HF DetrForSegmentation
parity, masks within 1e-5). Not trained here (no accelerator with COCO in this project).
"""

import ml_collections

from detr_jax.config_base import base_config

IMAGES_PER_EPOCH = 118_287


def get_config(arg: str = ""):
    stage = arg or "masks"
    if stage not in ("boxes", "masks"):
        raise ValueError(f"configs/detr_panoptic_coco.py:{arg}; choose boxes or masks")
    c = base_config()
    c.dataset = "coco"
    c.coco.name = "coco/2017_panoptic"
    c.num_classes = 250  # the original's panoptic class slots (ids up to 200 are used)
    c.max_boxes = 96  # segments per image (below the 100 queries)
    c.image_buckets = [(800, 800), (800, 1088), (1088, 800), (1344, 1344)]
    c.batch_size = 64
    steps_per_epoch = IMAGES_PER_EPOCH // c.batch_size
    m = c.model
    m.backbone.name = "resnet50"
    m.backbone.norm = "frozen_bn"
    m.transformer.dropout = 0.1
    c.loss.terms.labels.eos_coef = 0.1
    c.data.with_masks = True  # both stages read the panoptic segments as targets
    c.log_every = 100
    c.checkpoint_every = steps_per_epoch
    c.eval.postprocessors = ("bbox",)
    if stage == "boxes":
        c.total_steps = 300 * steps_per_epoch
        c.optim.lr_drop_step = 200 * steps_per_epoch
        c.eval_every = 10 * steps_per_epoch
        return c
    m.heads = ml_collections.ConfigDict(dict(  # models/heads/detr_mask.py
        name="detr_segm", nheads=8, feature_levels=("C2", "C3", "C4")))
    c.freeze = "detector"  # only bbox_attention and mask_head train
    c.loss.terms.masks_full = {"alpha": 0.25, "gamma": 2.0}
    c.loss.weights.loss_mask = 1.0
    c.loss.weights.loss_dice = 1.0
    c.total_steps = 25 * steps_per_epoch
    c.optim.lr_drop_step = 20 * steps_per_epoch
    c.eval_every = 5 * steps_per_epoch
    c.eval.postprocessors = ("bbox", "segm", "panoptic")
    return c
