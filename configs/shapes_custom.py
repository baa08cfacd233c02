"""The shapes demo read back through the COCO-JSON loader (configs/custom.py's dataset).

    python -m detr_jax.data.shapes --export /tmp/shapes_train --num-images 33600
    python -m detr_jax.data.shapes --export /tmp/shapes_val --num-images 256 --split val
    python -m detr_jax.main --config=configs/shapes_custom.py:/tmp/shapes_train,/tmp/shapes_val \
        --workdir=runs/shapes_custom

Same model and schedule as configs/shapes_vanilla.py; the transforms are the identity (96 px, no
flip, no crop), so with an export of total_steps * batch_size training images the loader sees the
same images as the built-in stream (in a permuted order) and is evaluated on the same 256 validation
images: its AP should match the built-in stream's at equal steps.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shapes_vanilla import get_config as shapes_config  # noqa: E402


def get_config(dirs: str = ","):
    train_dir, val_dir = dirs.split(",")
    c = shapes_config()
    c.dataset = "custom"
    c.custom.train_annotations = os.path.join(train_dir, "annotations.json")
    c.custom.train_images = os.path.join(train_dir, "images")
    c.custom.val_annotations = os.path.join(val_dir, "annotations.json")
    c.custom.val_images = os.path.join(val_dir, "images")
    c.custom.num_workers = 2
    t = c.transforms
    t.scales = [96]
    t.max_size = 96
    t.eval_size = 96
    t.hflip = False
    t.random_select = False
    return c
