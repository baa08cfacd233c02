"""DAB-DETR R50 on COCO 2017 with the paper's hyperparameters.

Run:  python -m detr_jax.main --config=configs/dab_coco.py --workdir=runs/dab \
          --config.coco.data_dir=/path/to/tensorflow_datasets
50 epochs at batch 16 (IDEA-Research/DAB-DETR's coco.sh: 8 GPUs x 2) with the lr dropped x0.1 at
epoch 40; the published model reaches 42.2 AP. Not trained here (no COCO on this machine); the
forward pass matches HF's DabDetrForObjectDetection to ~1e-5
(tests/models/test_dab_parity.py), so converted HF weights can be evaluated:
python -m detr_jax.convert --source=hf /path/to/dab-detr-resnet-50 runs/dab_pt
then --config.init_from=runs/dab_pt.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from coco import get_config as detr_coco_config  # noqa: E402

from detr_jax.config_dab import dab_detr  # noqa: E402

STEPS_PER_EPOCH = 118_287 // 16


def get_config():
    # DETR's COCO setup (data, buckets, R50 with stem + layer1 frozen), then DAB-DETR's parts,
    # loss and lr groups, at batch 16 for 50 epochs.
    c = detr_coco_config()
    c.batch_size = 16
    c.total_steps = 50 * STEPS_PER_EPOCH
    c.eval_every = 5 * STEPS_PER_EPOCH
    c.checkpoint_every = STEPS_PER_EPOCH
    dab_detr(c)
    c.optim.schedule = "step"
    c.optim.lr_drop_step = 40 * STEPS_PER_EPOCH
    c.optim.lr_drop_factor = 0.1
    return c
