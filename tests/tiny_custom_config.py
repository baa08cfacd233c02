"""Tiny config on a COCO-format folder, for CLI tests: ``--config=tests/tiny_custom_config.py:DIR``.

DIR holds ``annotations.json`` and ``images/`` (e.g. the shapes export); train and val both use
it. Transform sizes are scaled down to the 96 px shapes images.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402


def get_config(root: str = ""):
    c = tiny_config()
    c.dataset = "custom"
    ann, images = os.path.join(root, "annotations.json"), os.path.join(root, "images")
    c.custom.train_annotations = c.custom.val_annotations = ann
    c.custom.train_images = c.custom.val_images = images
    c.custom.num_workers = 2
    t = c.transforms
    t.scales = [64, 80, 96]
    t.max_size = 96
    t.select_scales = [64, 80]
    t.crop_min = 48
    t.crop_max = 80
    t.eval_size = 96
    return c
