"""The DINO-style detector through the one training loop and evaluation: denoising losses
logged per layer, Group DETR groups, the EMA used for evaluation."""

from __future__ import annotations

import json
import math
import os

import pytest
from tiny_dino_config import tiny_dino

from detr_jax import train


@pytest.mark.slow  # the parts are tested in tests/models/test_dino.py (default suite)
@pytest.mark.parametrize("variant", ["dino_groups", "dn"])
def test_trains_and_evaluates(tmp_path, variant):
    config = tiny_dino(variant)
    config.matcher.name = "hungarian_jax"
    config.model.queries.num_queries = 10  # above max_boxes
    config.optim.param_rules = (("sampling_offsets", 0.1),)
    config.total_steps = 4
    config.eval.top_k = 30
    config.optim.ema_decay = 0.9 if variant == "dino_groups" else 0.0
    final = train.train_and_evaluate(config, str(tmp_path))
    assert {"AP", "AP50", "APs"} <= set(final)
    lines = [json.loads(x) for x in open(os.path.join(tmp_path, "metrics.jsonl"))]
    logged = {k for line in lines for k in line}
    assert {"loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0", "loss_ce_enc"} <= logged
    assert all(math.isfinite(line["loss"]) for line in lines if "loss" in line)
    assert any(line.get("loss_bbox_dn", 0) > 0 for line in lines)
