"""Parity with Hugging Face Mask2Former (random weights, offline): every prediction's class and
mask logits (the one before the first decoder layer and one per layer), the pixel decoder's
mask features and its encoder's refined levels.

HF's Mask2Former has no padding mask (its pixel decoder and masked attention read the whole
canvas, as the original), and neither has ours: the images below have different real sizes on
one canvas, both models see the zero padding as image, and everything is compared on the whole
canvas. The canvas is no multiple of 32, so the FPN's bilinear upsampling (12x15 -> 23x30) and
the attention masks' downsampling (23x30 -> 3x4, 6x8, 12x15) have uneven ratios.
"""

from __future__ import annotations

import flax
import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_mask2former_reference as ref  # noqa: E402
from hf_reference import random_batch  # noqa: E402

from detr_jax.convert import convert_state_dict  # noqa: E402
from detr_jax.convert.checkpoint import check_against_model, config_for  # noqa: E402
from detr_jax.models import build_model  # noqa: E402
from detr_jax.models.necks.pixel_decoder import PixelDecoder  # noqa: E402

TOL = 1e-4


def converted(spec, hf_model):
    """(config, model, variables) of our model built from HF's weights."""
    hints = {"model_type": "mask2former", "nheads": spec["heads"]}
    params, fields = convert_state_dict(ref.state_dict_numpy(hf_model), "hf", hints)
    config = config_for({**fields, "model.backbone.mask_features": False})
    check_against_model(params, config, backbone_only=False)
    model = build_model(config)
    return config, model, {"params": flax.traverse_util.unflatten_dict(params, sep="/")}


def test_mask2former_matches_hf_every_prediction():
    spec = ref.SMALL
    hf_model = ref.build_hf_mask2former(spec)
    images, mask = random_batch([(90, 120), (70, 100), (61, 117)], (90, 120))
    theirs = ref.hf_forward(hf_model, images)
    config, model, variables = converted(spec, hf_model)
    t = config.model.transformer
    assert (t.name, t.dec_layers, t.nheads) == ("mask2former", spec["decoder_layers"],
                                                spec["heads"])
    assert config.model.neck.mask_dim == spec["mask_dim"]
    assert config.num_classes == spec["num_labels"]

    def run(im, m):
        out, state = model.apply(variables, im, m, capture_intermediates=lambda mdl, _: (
            isinstance(mdl, PixelDecoder)), mutable=["intermediates"])
        pd = state["intermediates"]["pixel_decoder"]["__call__"][0]
        return out, pd["tokens"], pd["mask_features"]

    out, tokens, mask_features = jax.jit(run)(images, mask)
    n = spec["decoder_layers"] + 1
    assert out["pred_logits"].shape == theirs["logits"].shape == (n, 3, spec["num_queries"],
                                                                  spec["num_labels"] + 1)
    assert out["pred_masks"].shape == theirs["masks"].shape == (n, 3, spec["num_queries"],
                                                                23, 30)
    d_logits = np.abs(np.asarray(out["pred_logits"]) - theirs["logits"]).max(axis=(1, 2, 3))
    d_masks = np.abs(np.asarray(out["pred_masks"]) - theirs["masks"]).max(axis=(1, 2, 3, 4))
    d_features = np.abs(np.asarray(mask_features) - theirs["mask_features"]).max()
    d_encoder = np.abs(np.asarray(tokens) - theirs["encoder"]).max()
    print(f"max |logits diff| per prediction {d_logits}, |mask logits diff| {d_masks}, "
          f"|mask features diff| {d_features:.2e}, |encoder diff| {d_encoder:.2e}")
    assert d_encoder <= TOL and d_features <= TOL
    assert d_logits.max() <= TOL and d_masks.max() <= TOL
    # The reference really varies, and its masks block part of every level (otherwise the
    # masked attention would be the unmasked fallback and go untested).
    assert theirs["logits"].std(axis=(1, 2, 3)).min() > 0.1
    assert theirs["masks"].std(axis=(1, 2, 3, 4)).min() > 0.5
    assert theirs["mask_features"].std() > 0.5 and theirs["encoder"].std() > 0.5
    assert 0.2 < ref.blocked_fraction(theirs["masks"], theirs["shapes"]) < 0.8
    # Boxes of the masks: inside each real image, normalised, zero for empty masks.
    boxes = np.asarray(out["pred_boxes"])
    assert boxes.shape == (n, 3, spec["num_queries"], 4)
    assert np.all(boxes >= 0) and np.all(boxes[..., :2] <= 1) and np.all(boxes[..., 2:] <= 1)
