"""Fine-tune / train DETR on your own COCO-format dataset (annotations JSON + image folder).

Run (paths and num_classes = the number of categories in the train file are required):

    python -m detr_jax.main --config=configs/custom.py --workdir=runs/mydata \
        --config.custom.train_annotations=/data/train.json \
        --config.custom.train_images=/data/train \
        --config.custom.val_annotations=/data/val.json --config.custom.val_images=/data/val \
        --config.num_classes=3

Category ids in the files may be arbitrary and non-contiguous: they are mapped to labels
0..num_classes-1 in sorted id order and back in predictions.json. The transforms are DETR's
(multi-scale 480..800, max 1333, RandomSelect crop branch, eval 800); for small images lower
`transforms.*` and `image_buckets` together (see README "Fine-tune on your own dataset").
"""

from detr_jax.config_base import base_config


def get_config():
    c = base_config()
    c.dataset = "custom"
    c.num_classes = 1  # set to the number of categories in custom.train_annotations
    c.total_steps = 20_000
    c.batch_size = 8
    c.eval_every = 2000
    c.checkpoint_every = 1000
    c.log_every = 50
    c.max_boxes = 64
    # Buckets: every image after the transforms fits (1344, 1344); the smaller ones cut the padding
    # of landscape and portrait batches. At most len(image_buckets) compiles each for the train
    # and the eval step.
    c.image_buckets = [(800, 1344), (1344, 800), (1344, 1344)]
    c.model.backbone.name = "resnet50"
    c.model.backbone.norm = "frozen_bn"
    c.model.queries.num_queries = 100
    c.optim.lr = 1e-4
    c.optim.param_rules = (("^backbone/", 0.1),)
    c.optim.warmup_steps = 200
    c.optim.schedule = "cosine"
    return c
