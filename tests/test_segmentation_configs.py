"""configs/maskformer_coco.py, configs/detr_panoptic_coco.py and configs/shapes_panoptic.py:
every variant validates and builds with the published recipe's values, and the panoptic shapes
demo trains, evaluates and writes its panoptic files end to end (tiny sizes)."""

from __future__ import annotations

import json
import os

import flax
import jax
import numpy as np
import pytest
from test_deformable_configs import load

from detr_jax import optim
from detr_jax.config_validation import ConfigError, validate_config
from detr_jax.models import build_model, variable_shapes


def _params(c):
    return variable_shapes(build_model(c), (64, 64))["params"]


def test_mask2former_coco_recipe():
    c = load("maskformer_coco", "")
    validate_config(c, 1)
    n = sum(x.size for x in jax.tree.leaves(_params(c)))
    # HF Mask2Former R50 has 44,036,998 params; ours also holds the 53,120 frozen BN statistics.
    assert n == 44_090_118
    assert (c.num_classes, c.model.queries.num_queries, c.model.transformer.dec_layers,
            c.model.neck.enc_layers) == (133, 100, 9, 6)
    assert dict(c.loss.weights) == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    assert c.loss.terms.masks.num_points == 12544 and c.loss.terms.labels.eos_coef == 0.1
    assert (c.optim.lr, c.optim.weight_decay, c.batch_size) == (1e-4, 0.05, 16)
    assert tuple(c.eval.postprocessors) == ("bbox", "segm", "panoptic") and c.data.with_masks


def test_maskformer_coco_recipe():
    c = load("maskformer_coco", "maskformer")
    validate_config(c, 1)
    assert sum(x.size for x in jax.tree.leaves(_params(c))) > 45e6  # the paper's 45M
    assert (c.model.neck.name, c.model.transformer.name, c.model.heads.name) == (
        "maskformer_fpn", "detr", "maskformer")
    assert dict(c.loss.weights) == {"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0}
    assert set(c.matcher.costs) == {"class", "mask_focal", "dice"}


def test_detr_panoptic_stages():
    boxes, masks = load("detr_panoptic_coco", "boxes"), load("detr_panoptic_coco", "masks")
    for c in (boxes, masks):
        validate_config(c, 1)
    p_boxes, p_masks = _params(boxes), _params(masks)
    flat_b = flax.traverse_util.flatten_dict(p_boxes, sep="/")
    flat_m = flax.traverse_util.flatten_dict(p_masks, sep="/")
    assert set(flat_b) < set(flat_m)  # the box stage's checkpoint fills the mask stage
    new = {k.split("/")[0] for k in set(flat_m) - set(flat_b)}
    assert new == {"bbox_attention", "mask_head"}
    model = build_model(masks)
    labels = flax.traverse_util.flatten_dict(
        optim.param_labels(p_masks, optim.optimizer_rules(masks, model, p_masks)), sep="/")
    trainable = {k.split("/")[0] for k, v in labels.items() if v != optim.FROZEN}
    assert trainable == {"bbox_attention", "mask_head"}


def test_mask_postprocessors_need_masks_in_the_data():
    c = load("shapes_vanilla", "")
    c.eval.postprocessors = ("bbox", "segm")
    with pytest.raises(ConfigError, match="data.with_masks"):
        validate_config(c, 1)
    c.eval.postprocessors = ("segm",)
    with pytest.raises(ConfigError, match="start with 'bbox'"):
        validate_config(c, 1)
    p = load("shapes_panoptic", "")
    p.eval.panoptic_object_threshold = 1.5
    with pytest.raises(ConfigError, match="eval.panoptic_object_threshold=1.5"):
        validate_config(p, 1)


@pytest.mark.slow  # compiles a Mask2Former train step and its eval step (~1 min on 2 cores)
def test_panoptic_shapes_trains_and_scores_end_to_end(tmp_path):
    from detr_jax.train import train_and_evaluate

    c = load("shapes_panoptic", "")
    c.total_steps, c.shapes.num_val, c.eval.batch_size = 3, 8, 8
    c.batch_size, c.checkpoint_every, c.log_every = 2, 0, 1
    c.model.backbone.width, c.model.hidden_dim = 8, 32
    c.model.neck.mask_dim, c.model.neck.dim_feedforward, c.model.neck.nheads = 16, 32, 4
    c.model.neck.num_groups = 8
    c.model.transformer.nheads, c.model.transformer.dim_feedforward = 4, 32
    c.model.transformer.dec_layers = 1
    c.use_tensorboard = False
    metrics = train_and_evaluate(c, str(tmp_path))
    for k in ("AP", "mask_AP", "PQ", "SQ", "RQ", "PQ_th", "PQ_st", "loss_mask", "loss_dice"):
        assert k in metrics and metrics[k] == metrics[k], k  # present and not NaN
    pan = json.loads((tmp_path / "panoptic_predictions.json").read_text())
    assert len(pan["annotations"]) == 8 and {c["isthing"] for c in pan["categories"]} == {0, 1}
    for a in pan["annotations"]:
        assert os.path.exists(tmp_path / "panoptic_predictions" / a["file_name"])
    assert (tmp_path / "eval_panoptic.png").exists()
    cats = json.loads((tmp_path / "categories.json").read_text())
    assert [c["isthing"] for c in cats] == [1] * 6 + [0] * 5

    # The predict CLI on the workdir: masks as RLE, overlays, the COCO panoptic files.
    from PIL import Image

    from detr_jax.data import build_dataset
    from detr_jax.ops.panoptic_ids import rgb_to_id
    from detr_jax.predict import run

    image = build_dataset(c).val_samples()[0]["image"]
    Image.fromarray(image).save(tmp_path / "7.png")
    out = tmp_path / "pred"
    run(c, str(tmp_path), [str(tmp_path / "7.png")], str(out), score_threshold=0.0)
    segm = json.loads((out / "segmentations.json").read_text())
    assert segm and all(r["image_id"] == 7 and "counts" in r["segmentation"] for r in segm)
    pan = json.loads((out / "panoptic.json").read_text())
    ids = rgb_to_id(np.asarray(Image.open(out / "panoptic" / "7.png")))
    assert ids.shape == image.shape[:2]
    assert set(np.unique(ids)) - {0} == {s["id"] for s in pan["annotations"][0]["segments_info"]}
    assert (out / "7_masks.png").exists() and (out / "7_panoptic.png").exists()
