"""A Mask2Former small enough for unit tests (tests/models/test_mask2former_parts.py): the
tiny ResNet-18 (width 8, C2-C5), a 1-layer pixel decoder and a 2-layer masked-attention decoder
at D = 32."""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402

from detr_jax.config_base import set_field  # noqa: E402


def tiny_mask2former(**overrides):
    c = tiny_config()
    m = c.model
    m.backbone.dilation = False
    m.neck = ml_collections.ConfigDict(dict(  # models/necks/pixel_decoder.py
        name="mask2former_pixel_decoder", mask_dim=24, levels=("C2", "C3", "C4", "C5"),
        encoder_levels=3, enc_layers=1, nheads=4, enc_points=2, dim_feedforward=32,
        dropout=0.0, num_groups=8, remat_sampling=False, sampling_chunk=0))
    m.transformer = ml_collections.ConfigDict(dict(  # models/transformers/mask2former.py
        name="mask2former", nheads=4, dec_layers=2, dim_feedforward=32, dropout=0.1,
        attention_impl="xla"))
    m.queries = ml_collections.ConfigDict(dict(
        name="learned", num_queries=10, init_std=1.0, num_groups=1, with_content=True))
    m.heads = ml_collections.ConfigDict(dict(name="mask2former"))  # models/heads/mask2former.py
    for k, v in overrides.items():
        set_field(c, k, v)
    return c
