"""Deformable DETR through the one training loop, evaluation and the predict CLI (two-stage:
proposal losses, sigmoid heads, top-k over (query, class) pairs; no dense attention maps)."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest
from conftest import tiny_config

from detr_jax import train
from detr_jax.config_deformable import deformable_detr
from detr_jax.data import SHAPES_SPECS
from detr_jax.data.shapes import ShapesDataset, export_coco
from detr_jax.predict import run


def tiny_deformable():
    c = tiny_config()
    c.model.backbone.dilation = False
    deformable_detr(c, "two_stage")
    c.model.neck.num_groups = 8
    t = c.model.transformer
    t.nheads, t.enc_layers, t.dec_layers, t.dim_feedforward = 4, 1, 2, 32
    c.model.queries.num_queries = 10
    c.matcher.name = "hungarian_jax"
    c.optim.param_rules = (("sampling_offsets", 0.1),)
    c.total_steps = 4
    c.eval.top_k = 30  # more than the 10 queries: (query, class) pairs
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ddetr"))
    config = tiny_deformable()
    return config, workdir, train.train_and_evaluate(config, workdir)


@pytest.mark.slow  # 46 (its fixture) s alone on 2 cores (2026-12-02; default budget 6 min)
def test_trains_and_evaluates(trained):
    config, workdir, final = trained
    assert {"AP", "AP50", "APs"} <= set(final)
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    logged = {k for line in lines for k in line}
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc", "loss_ce_0"} <= logged
    assert all(math.isfinite(line["loss"]) for line in lines if "loss" in line)
    predictions = json.load(open(os.path.join(workdir, "predictions.json")))
    per_image = {}
    for p in predictions:
        per_image[p["image_id"]] = per_image.get(p["image_id"], 0) + 1
    assert max(per_image.values()) == 30  # eval.top_k pairs, more than the queries


@pytest.mark.slow  # the fixture is 46 s alone on 2 cores (2026-12-02; default budget 6 min)
def test_predict_cli_on_the_workdir(trained, tmp_path):
    config, workdir, _ = trained
    ds = ShapesDataset(SHAPES_SPECS["standard"], seed=0, num_val=2)
    export_coco(ds.val_samples(), str(tmp_path / "data"), ds.class_names)
    images = sorted(glob.glob(str(tmp_path / "data" / "images" / "*.png")))
    results = run(config, workdir, images, str(tmp_path / "out"), score_threshold=0.0)
    assert len(results) == 2 * config.model.queries.num_queries
    assert glob.glob(str(tmp_path / "out" / "*_detections.png"))
    assert not glob.glob(str(tmp_path / "out" / "*_attention.png"))  # deformable: no maps
