"""A DINO-style detector small enough for unit tests (tests/models/test_dino.py and others)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402

from detr_jax.config_dino import dino_detr  # noqa: E402


def tiny_dino(variant="dino_groups", groups=2, **transformer):
    c = tiny_config()
    c.model.backbone.dilation = False
    dino_detr(c, variant, groups=groups)
    c.model.neck.num_groups = 8
    t = c.model.transformer
    t.nheads, t.enc_layers, t.dec_layers, t.dim_feedforward = 4, 1, 2, 32
    t.update(transformer)
    c.model.queries.num_queries = 6
    c.model.queries.dn_number = 12
    return c

