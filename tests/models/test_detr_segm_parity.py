"""Parity of DETR's mask head (`model.heads.name = "detr_segm"`) with Hugging Face
`DetrForSegmentation` (random weights, offline), and its weights' three key layouts (HF 5.x,
HF 4.x / the hub's panoptic checkpoints, facebookresearch/detr's DETRsegm) converting alike."""

from __future__ import annotations

import flax
import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_detr_segm_reference as sref  # noqa: E402
import hf_reference as ref  # noqa: E402

from detr_jax.convert import convert_state_dict, hf_to_facebook_state_dict  # noqa: E402
from detr_jax.convert.checkpoint import check_against_model, config_for  # noqa: E402
from detr_jax.models import build_model  # noqa: E402

TOL = 1e-4
SPEC = sref.SMALL_SEGM


def _ours(state_dict, source="hf", spec=SPEC, **overrides):
    params, fields = convert_state_dict(state_dict, source)
    config = config_for({**fields, "model.transformer.nheads": spec["heads"],
                         "model.backbone.mask_features": False, "model.transformer.dropout": 0.0,
                         **overrides})
    model = build_model(config)
    variables = {"params": flax.traverse_util.unflatten_dict(params, sep="/")}
    return jax.jit(lambda im, m: model.apply(variables, im, m))


@pytest.fixture(scope="module")
def hf_model():
    return sref.build_hf_detr_segm(SPEC)


def _check(hf_model, canvas, sizes, spec=SPEC, sharp_queries=True, **overrides):
    images, mask = ref.random_batch(sizes, canvas)
    hf_logits, hf_boxes, hf_masks = sref.hf_segm_forward(hf_model, images, mask)
    out = _ours(ref.state_dict_numpy(hf_model), spec=spec, **overrides)(images, mask)
    b, q = len(sizes), spec["num_queries"]
    h4, w4 = -(-canvas[0] // 4), -(-canvas[1] // 4)
    assert out["pred_masks"].shape == (1, b, q, h4, w4) == (1, *hf_masks.shape)
    assert out["pred_masks"].dtype == np.float32
    d_logits = np.abs(np.asarray(out["pred_logits"]) - hf_logits).max(axis=(1, 2, 3))
    d_boxes = np.abs(np.asarray(out["pred_boxes"]) - hf_boxes).max(axis=(1, 2, 3))
    d_masks = np.abs(np.asarray(out["pred_masks"][0]) - hf_masks).max()
    # The reference must be a sharp test: masks vary over the pixels and, through the
    # attention maps alone, from query to query.
    per_query = np.abs(hf_masks - hf_masks.mean(axis=1, keepdims=True)).max()
    print(f"max |diff| logits per layer {d_logits}, boxes per layer {d_boxes}, masks "
          f"{d_masks:.2e}; reference masks: pixel std {hf_masks.std():.3f}, largest per-query "
          f"deviation {per_query:.3f}")
    assert hf_masks.std() > 0.1 and (per_query > 100 * TOL or not sharp_queries)
    assert d_logits.max() <= TOL and d_boxes.max() <= TOL
    assert d_masks <= TOL


def test_small_detr_segm_matches_hf_logits_boxes_and_masks(hf_model):
    """ResNet-18 (width 8), 2+3 layers, 8 heads; padded images of three sizes on a canvas that
    is not a multiple of the stride (masks at 25 x 30)."""
    _check(hf_model, (100, 120), [(100, 120), (70, 90), (53, 117)])


@pytest.mark.slow
def test_small_dc5_detr_segm_matches_hf():
    """DC5: C5 at stride 16, as C4 (the first FPN step upsamples by 1)."""
    hf_model = sref.build_hf_detr_segm(SPEC)
    ref.make_dc5(hf_model.detr)
    _check(hf_model, (96, 112), [(96, 112), (61, 80)], **{"model.backbone.dilation": True})


@pytest.mark.slow
def test_r50_detr_segm_matches_hf():
    """The COCO panoptic architecture: ResNet-50 (adapters from 1024, 512, 256 channels),
    6+6 layers, 100 queries, D = 256, 8 heads. Its random ResNet-50's C5 map barely varies
    over the positions, so every query attends alike and the masks hardly differ between
    queries (~4e-6): the per-query path is checked by the small models only."""
    _check(sref.build_hf_detr_segm(ref.R50), (160, 200), [(160, 200), (128, 150)],
           spec=ref.R50, sharp_queries=False)


def _facebook_layout(hf_sd):
    """The facebookresearch/detr DETRsegm layout: the detector's original keys under `detr.`
    and the original's mask-head names."""
    det = {k[len("detr."):]: v for k, v in hf_sd.items() if k.startswith("detr.")}
    mask = {k: v for k, v in sref.original_mask_keys(hf_sd).items() if not k.startswith("detr.")}
    return {**{f"detr.{k}": v for k, v in hf_to_facebook_state_dict(det).items()}, **mask}


def test_hf5_hf4_and_facebook_layouts_convert_to_the_same_checkpoint(hf_model):
    hf_sd = ref.state_dict_numpy(hf_model)
    params, fields = convert_state_dict(hf_sd, "hf")
    assert fields["model.heads"] == {"name": "detr_segm", "nheads": SPEC["heads"],
                                     "feature_levels": ["C2", "C3", "C4"]}
    check_against_model(params, config_for(fields), backbone_only=False)  # exact keys, shapes
    assert any(k.startswith("mask_head/") for k in params)
    for name, sd, source in (("hf 4.x", sref.original_mask_keys(hf_sd), "hf"),
                             ("facebook", _facebook_layout(hf_sd), "facebook")):
        other, other_fields = convert_state_dict(sd, source)
        assert other_fields == fields, name
        assert sorted(other) == sorted(params), name
        for k in params:
            np.testing.assert_allclose(other[k], params[k], rtol=0, atol=0, err_msg=f"{name} {k}")


def test_unknown_keys_in_a_segmentation_state_dict_are_named(hf_model):
    from detr_jax.models.torch_keys import ConversionError

    sd = ref.state_dict_numpy(hf_model)
    sd["mask_head.lay9.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(ConversionError, match="mask_head.lay9.weight"):
        convert_state_dict(sd, "hf")
    sd.pop("mask_head.lay9.weight")
    sd["panoptic_extra.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(ConversionError, match="panoptic_extra.weight"):
        convert_state_dict(sd, "hf")
