"""DETR R50 on COCO 2017 with the paper's hyperparameters.

Run:  python -m detr_jax.main --config=configs/coco.py --workdir=runs/coco_r50 \
          --config.coco.data_dir=/path/to/tensorflow_datasets
300 epochs (about 554k steps at batch 64) with the lr dropped x0.1 at epoch 200; the original takes
about 6 days on 8 V100 GPUs and reaches 42.0 AP. Data: TFDS coco/2017 prepared under data_dir
(detr_jax/data/tfds_coco.py); for official numbers add
--config.eval.annotations_file=/path/to/annotations/instances_val2017.json.
Buckets: after the DETR transforms every image fits (1344, 1344) (sides <= transforms.max_size
1333); the train and eval steps compile at most once per bucket each (8 compiles).
"""

from detr_jax.config_base import base_config

STEPS_PER_EPOCH = 118_287 // 64


def get_config():
    c = base_config()
    c.dataset = "coco"
    c.num_classes = 91  # the original COCO category ids, so predictions carry real ids
    c.batch_size = 64
    c.total_steps = 300 * STEPS_PER_EPOCH
    c.eval_every = 10 * STEPS_PER_EPOCH
    c.checkpoint_every = STEPS_PER_EPOCH
    c.log_every = 100
    c.max_boxes = 64
    c.image_buckets = [(800, 800), (800, 1088), (1088, 800), (1344, 1344)]
    c.model.backbone.name = "resnet50"
    c.model.backbone.norm = "frozen_bn"
    c.model.backbone.frozen_stages = 2
    c.model.hidden_dim = 256
    c.model.transformer.enc_layers = 6
    c.model.transformer.dec_layers = 6
    c.model.transformer.dim_feedforward = 2048
    c.model.transformer.nheads = 8
    c.model.queries.num_queries = 100
    c.model.transformer.dropout = 0.1
    c.optim.lr = 1e-4
    c.optim.param_rules = (("^backbone/", 0.1),)  # backbone lr 1e-5
    c.optim.weight_decay = 1e-4
    c.optim.clip_norm = 0.1
    c.optim.warmup_steps = 0
    c.optim.schedule = "step"
    c.optim.lr_drop_step = 200 * STEPS_PER_EPOCH
    c.loss.aux_loss = True
    c.loss.terms.labels.eos_coef = 0.1
    return c
