"""The DINO-style detector on the embedded shapes demo, from scratch on a laptop CPU.

Run:  python -m detr_jax.main --config=configs/shapes_dino.py:dino --workdir=runs/shapes_dino
`get_config(arg)`: "dn" (two-stage Deformable DETR + DN-DETR denoising), "dino" (default:
contrastive denoising, mixed query selection, look-forward-twice), "dino_groups" (+ Group
DETR's one-to-many groups) or "dino_groups_ema" (+ an EMA of the params for evaluation): the
rows of the ablation in docs/benchmarks.md ("DINO on shapes"). Data, backbone and sizes of
configs/shapes_deformable.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shapes_deformable import shapes_recipe  # noqa: E402
from shapes_vanilla import get_config as shapes_config  # noqa: E402

from detr_jax.config_dino import dino_detr  # noqa: E402

ARGS = ("dn", "dino", "dino_groups", "dino_groups_ema")


def get_config(arg: str = "dino"):
    arg = arg or "dino"
    if arg not in ARGS:
        raise ValueError(f"configs/shapes_dino.py:{arg}; choose one of {ARGS}")
    c = shapes_config()
    c.model.backbone.dilation = False  # C3-C5 at strides 8 / 16 / 32
    dino_detr(c, arg.removesuffix("_ema"), groups=3)
    shapes_recipe(c)
    q = c.model.queries
    q.dn_number = 32  # 2 groups of 8 ground-truth slots x (positive, negative)
    c.eval.top_k = 100
    if arg.endswith("_ema"):
        c.optim.ema_decay = 0.999
    return c
