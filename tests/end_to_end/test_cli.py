"""End-to-end: the CLI trains a few steps, writes the result files, and its AP is pycocotools'."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detr_jax.config_validation import ConfigError, validate_config


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_cli_run_writes_result_files(cli_run):
    workdir, proc = cli_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in (
        "eval_results.json",
        "predictions.json",
        "ground_truth.json",
        "eval_images.png",
        "metrics.jsonl",
        "config.json",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps[-1] == 6
    results = json.load(open(os.path.join(workdir, "eval_results.json")))
    assert results["step"] == 6
    assert set(results["metrics"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


@pytest.mark.slow  # multi-second compile: the full suite runs it
def test_eval_results_ap_equals_pycocotools_recomputed(cli_run):
    workdir, _ = cli_run
    results = json.load(open(os.path.join(workdir, "eval_results.json")))
    preds = json.load(open(os.path.join(workdir, "predictions.json")))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(workdir, "ground_truth.json"))
        assert len(preds) > 0
        dt = gt.loadRes(os.path.join(workdir, "predictions.json"))
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert results["metrics"]["AP"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert results["metrics"]["AP50"] == pytest.approx(ev.stats[1], abs=1e-12)
    # Predictions carry the dataset's category ids (1..6 for shapes), not contiguous labels.
    assert {p["category_id"] for p in preds} <= {c["id"] for c in gt.dataset["categories"]}


@pytest.mark.slow  # 46 (its fixture) s alone on 2 cores (2026-12-02; default budget 6 min)
def test_cli_resume_continues_from_checkpoint(cli_run):
    workdir, proc = cli_run
    metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [m["step"] for m in metrics if "loss" in m and "eval/AP" not in m][:2] == [3, 6]


def test_config_validation_names_fields():
    from conftest import tiny_config

    c = tiny_config(
        **{
            "model.queries.num_queries": 8,
            "max_boxes": 8,
            "matcher.name": "nope",
            "optim.lr": -1.0,
            "batch_size": 6,
        }
    )
    with pytest.raises(ConfigError) as e:
        validate_config(c, num_devices=4)
    msg = str(e.value)
    for field in ("model.queries.num_queries", "matcher.name", "optim.lr", "batch_size"):
        assert field in msg
    assert "hungarian_scipy" in msg  # the choices are listed


def test_shipped_configs_load_and_validate():
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name in ("shapes", "coco"):
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(root, "configs", f"{name}.py")
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        validate_config(mod.get_config(), num_devices=1)


def test_coco_config_fails_clearly_without_prepared_data(tmp_path):
    from detr_jax import data
    from detr_jax.data.coco_json import DataError

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import_path = os.path.join(root, "configs", "coco.py")
    import importlib.util

    spec = importlib.util.spec_from_file_location("coco_cfg", import_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    config.coco.data_dir = str(tmp_path)
    with pytest.raises(DataError, match="coco/2017 is not prepared"):
        data.build_dataset(config)
