"""The predict CLI on shapes images: COCO results JSON, detection and attention PNGs."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image
from random_params import random_variables

from detr_jax.data import SHAPES_SPECS
from detr_jax.data.shapes import ShapesDataset, export_coco
from detr_jax.predict import run
from detr_jax.pretrained import save_params_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random tiny model saved as a params checkpoint, and 3 exported shapes images."""
    tmp = tmp_path_factory.mktemp("predict")
    config = tiny_config()
    variables = random_variables(config, 0)
    save_params_checkpoint(
        str(tmp / "ck"), variables["params"], {"source": "test"}, variables["batch_stats"]
    )
    ds = ShapesDataset(SHAPES_SPECS["standard"], seed=0, num_val=3)
    ann = export_coco(ds.val_samples(), str(tmp / "data"), ds.class_names)
    images = sorted(glob.glob(str(tmp / "data" / "images" / "*.png")))
    return config, str(tmp / "ck"), images, ann, tmp


def test_predict_writes_coco_results_and_pictures(setup):
    from pycocotools.coco import COCO

    config, ckpt, images, ann, tmp = setup
    out = str(tmp / "out")
    # A random model: threshold 0 keeps every query, so every output kind is produced.
    results = run(config, ckpt, images, out, score_threshold=0.0, max_attention_maps=2)
    assert len(results) == len(images) * config.model.queries.num_queries
    saved = json.load(open(os.path.join(out, "detections.json")))
    assert saved == json.loads(json.dumps(results))
    gt = COCO(ann)
    dt = gt.loadRes(os.path.join(out, "detections.json"))  # valid COCO results
    assert set(dt.getImgIds()) == set(gt.getImgIds())
    for r in results:
        assert r["category_id"] in gt.getCatIds() and len(r["bbox"]) == 4
    for path in images:
        stem = os.path.join(out, os.path.splitext(os.path.basename(path))[0])
        pic = np.asarray(Image.open(stem + "_detections.png"))
        assert pic.ndim == 3 and min(pic.shape[:2]) >= 96
        assert len(glob.glob(stem + "_query*_attention.png")) == 2
        assert os.path.exists(stem + "_encoder_attention.png")

    none = run(config, ckpt, images[:1], str(tmp / "none"), score_threshold=1.01)
    assert none == [] and os.path.exists(str(tmp / "none" / "detections.json"))


def test_predict_refuses_a_checkpoint_that_does_not_fit(setup):
    config, ckpt, images, _, tmp = setup
    with pytest.raises(ValueError, match="does not fit the config"):
        run(tiny_config(num_classes=3), ckpt, images[:1], str(tmp / "bad"))


@pytest.mark.slow
def test_predict_cli(setup):
    _, ckpt, images, _, tmp = setup
    cmd = [
        sys.executable,
        "-m",
        "detr_jax.predict",
        "--config=tests/tiny_config.py",
        f"--checkpoint={ckpt}",
        f"--output_dir={tmp / 'cli'}",
        "--score_threshold=0.0",
        "--point=40,50",
        *images[:1],
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.load(open(tmp / "cli" / "detections.json"))


def test_class_info_reads_the_training_workdirs_categories(tmp_path_factory):
    """A custom run's non-contiguous ids and names come back from its workdir's categories.json,
    found from the workdir, its checkpoints/ folder or a step directory."""
    from detr_jax.predict import class_info

    tmp_path = tmp_path_factory.mktemp("workdir")
    config = tiny_config(**{"dataset": "custom", "num_classes": 2})
    cats = [{"id": 7, "name": "cat"}, {"id": 42, "name": "dog"}]
    (tmp_path / "categories.json").write_text(json.dumps(cats))
    step_dir = tmp_path / "checkpoints" / "5"
    step_dir.mkdir(parents=True)
    for where in (tmp_path, tmp_path / "checkpoints", step_dir):
        assert class_info(config, None, str(where)) == (["cat", "dog"], [7, 42])
    assert class_info(config, ["a", "b"], str(step_dir)) == (["a", "b"], [7, 42])
    # Without the file (e.g. a converted checkpoint): generic names, id = label.
    other = str(tmp_path_factory.mktemp("converted"))
    assert class_info(config, None, other) == (["class_0", "class_1"], [0, 1])
