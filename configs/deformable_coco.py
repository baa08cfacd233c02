"""Deformable DETR R50 on COCO 2017 with the paper's hyperparameters.

Run:  python -m detr_jax.main --config=configs/deformable_coco.py:refine --workdir=runs/ddetr \
          --config.coco.data_dir=/path/to/tensorflow_datasets
`get_config(arg)`: "plain" (default), "refine" (iterative box refinement) or "two_stage"
(refinement + two-stage). 50 epochs at batch 32 with the lr dropped x0.1 at epoch 40; the
published models reach 44.5 / 46.2 / 46.9 AP (fundamentalvision/Deformable-DETR). Not trained
here (no COCO on this machine); the forward pass matches HF's Deformable DETR to 1e-5
(tests/models/test_deformable_parity.py), so converted published weights can be evaluated:
python -m detr_jax.convert --source=deformable r50_deformable_detr-checkpoint.pth runs/ddetr_pt
then --config.init_from=runs/ddetr_pt.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from coco import get_config as detr_coco_config  # noqa: E402

from detr_jax.config_deformable import deformable_detr  # noqa: E402

STEPS_PER_EPOCH = 118_287 // 32


def get_config(arg: str = "plain"):
    # DETR's COCO setup (data, buckets, R50 with stem + layer1 frozen, clip, weight decay), then
    # Deformable DETR's parts, loss and lr groups, at batch 32 for 50 epochs.
    c = detr_coco_config()
    c.batch_size = 32
    c.total_steps = 50 * STEPS_PER_EPOCH
    c.eval_every = 5 * STEPS_PER_EPOCH
    c.checkpoint_every = STEPS_PER_EPOCH
    deformable_detr(c, arg or "plain")
    c.optim.schedule = "step"
    c.optim.lr_drop_step = 40 * STEPS_PER_EPOCH
    c.optim.lr_drop_factor = 0.1
    return c
