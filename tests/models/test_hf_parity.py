"""Parity with Hugging Face DETR (random weights, offline): every decoder layer and the loss."""

from __future__ import annotations

import flax
import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_reference as ref  # noqa: E402

from detr_jax.convert import convert_state_dict  # noqa: E402
from detr_jax.convert.checkpoint import config_for  # noqa: E402
from detr_jax.losses import build_criterion  # noqa: E402
from detr_jax.models import build_model  # noqa: E402

TOL = 1e-4


def _ours(spec, hf_model, **model_overrides):
    params, fields = convert_state_dict(ref.state_dict_numpy(hf_model), "hf")
    config = config_for({
        **fields, "model.transformer.nheads": spec["heads"],
        "model.backbone.mask_features": False, "model.transformer.dropout": 0.0,
        **model_overrides,
    })
    model = build_model(config)
    variables = {"params": flax.traverse_util.unflatten_dict(params, sep="/")}
    return config, jax.jit(lambda im, m: model.apply(variables, im, m))


def _check(spec, canvas, sizes, position_embedding="sine", dilation=False):
    hf_model = ref.build_hf_detr(spec, position_embedding=position_embedding)
    if dilation:
        ref.make_dc5(hf_model)
    images, mask = ref.random_batch(sizes, canvas)
    hf_logits, hf_boxes = ref.hf_forward_all_layers(hf_model, images, mask)
    config, apply = _ours(spec, hf_model, **{"model.backbone.dilation": dilation})
    out = apply(images, mask)
    d_logits = np.abs(np.asarray(out["pred_logits"]) - hf_logits.numpy()).max(axis=(1, 2, 3))
    d_boxes = np.abs(np.asarray(out["pred_boxes"]) - hf_boxes.numpy()).max(axis=(1, 2, 3))
    print(f"max |logits diff| per layer {d_logits}, max |boxes diff| per layer {d_boxes}")
    assert out["pred_logits"].shape[0] == spec["decoder_layers"]
    assert d_logits.max() <= TOL and d_boxes.max() <= TOL

    labels, gt_boxes, valid = ref.random_targets(len(sizes), spec["num_labels"])
    hf_total, hf_terms = ref.hf_loss(hf_model, hf_logits, hf_boxes, labels, gt_boxes, valid)
    batch = {"labels": labels, "boxes": gt_boxes, "box_valid": valid}
    assert config.matcher.name == "hungarian_scipy"
    criterion, groups = build_criterion(config), int(out["num_query_groups"])  # static: 1
    total, ours = jax.jit(lambda o, b: criterion(dict(o, num_query_groups=groups), b))(out, batch)
    keys = [k for k in hf_terms if k.startswith(("loss_ce", "loss_bbox", "loss_giou"))]
    assert len(keys) == 3 * spec["decoder_layers"]
    diffs = {k: abs(float(ours[k]) - hf_terms[k]) for k in keys}
    d_total = abs(float(total) - hf_total)
    print(f"loss terms max diff {max(diffs.values()):.2e}, total {d_total:.2e}")
    assert max(diffs.values()) <= TOL, diffs
    assert d_total <= TOL


def test_small_detr_matches_hf_every_layer_and_loss():
    """ResNet-18 (width 8), 2+3 layers; a canvas that is not a multiple of the stride."""
    _check(ref.SMALL, (100, 120), [(100, 120), (70, 90), (53, 117)])


@pytest.mark.slow
def test_small_detr_learned_position_embedding_matches_hf():
    _check(ref.SMALL, (96, 128), [(96, 128), (64, 80)], position_embedding="learned")


@pytest.mark.slow
def test_small_dc5_matches_torchvision_style_dilated_hf_backbone():
    """DC5 (stride 16): HF's ResNet patched to torchvision's dilated last stage."""
    _check(ref.SMALL, (100, 120), [(100, 120), (70, 90)], dilation=True)


@pytest.mark.slow
def test_r50_detr_matches_hf_every_layer_and_loss():
    """The COCO architecture: ResNet-50, 6+6 layers, 100 queries, 91 classes."""
    _check(ref.R50, (160, 200), [(160, 200), (128, 150)])


def test_feature_mask_is_torch_nearest_resize():
    """backbones.base.resize_mask_nearest == F.interpolate(mask, size).bool() (DETR's rule)."""
    import torch

    from detr_jax.models.backbones.base import resize_mask_nearest

    rng = np.random.default_rng(0)
    for (hi, wi), (ho, wo) in (((100, 120), (4, 4)), ((97, 131), (7, 9)), ((64, 96), (2, 3))):
        mask = rng.random((2, hi, wi)) > 0.3
        want = torch.nn.functional.interpolate(torch.from_numpy(mask)[None].float(), (ho, wo))
        got = np.asarray(resize_mask_nearest(jax.numpy.asarray(mask), ho, wo))
        np.testing.assert_array_equal(got, want[0].bool().numpy())
