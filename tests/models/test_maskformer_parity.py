"""Parity with Hugging Face MaskFormer (random weights, offline; ResNet backbone): the pixel
decoder's mask features and every decoder layer's class and mask logits, and the mask-derived
boxes against boxes read off HF's masks by hand."""

from __future__ import annotations

import flax
import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_maskformer_reference as ref  # noqa: E402
from hf_reference import random_batch  # noqa: E402

from detr_jax.convert import convert_state_dict  # noqa: E402
from detr_jax.convert.checkpoint import config_for  # noqa: E402
from detr_jax.models import build_model  # noqa: E402
from detr_jax.models.necks.fpn_pixel_decoder import FPNPixelDecoder  # noqa: E402

TOL = 1e-4
CANVAS = (100, 120)  # not a multiple of 32: C2..C5 are 25x30, 13x15, 7x8, 4x4
SIZES = [(100, 120), (70, 90), (53, 117)]


def converted(spec, hf_model):
    """(config, model, variables) of our MaskFormer built from HF's weights."""
    hints = {"model_type": "maskformer", "nheads": spec["heads"]}
    params, fields = convert_state_dict(ref.state_dict_numpy(hf_model), "hf", hints)
    config = config_for({**fields, "model.backbone.mask_features": False,
                         "model.transformer.dropout": 0.0})
    model = build_model(config)
    return config, model, {"params": flax.traverse_util.unflatten_dict(params, sep="/")}


def apply_with_mask_features(model, variables, images, mask):
    """Our model's outputs and the pixel decoder's output (`mask_features`), captured."""

    def run(im, m):
        out, state = model.apply(variables, im, m, mutable=["intermediates"],
                                 capture_intermediates=lambda mdl, _: isinstance(
                                     mdl, FPNPixelDecoder))
        return out, state["intermediates"]["pixel_decoder"]["__call__"][0][0]  # (features, _)

    return jax.jit(run)(images, mask)


def boxes_from_masks_by_hand(mask_logits: np.ndarray, sizes) -> np.ndarray:
    """[L, B, Q, h, w] logits -> [L, B, Q, 4] normalised cxcywh: each stride-4 cell painted
    over its 4x4 input pixels, the image's real pixels kept, the box of the pixels with
    probability > 0.5 (zeros when there are none)."""
    out = np.zeros(mask_logits.shape[:3] + (4,), np.float32)
    for lyr in range(mask_logits.shape[0]):
        for b, (h, w) in enumerate(sizes):
            for q in range(mask_logits.shape[2]):
                pixels = np.kron(mask_logits[lyr, b, q] > 0, np.ones((4, 4), bool))[:h, :w]
                ys, xs = np.nonzero(pixels)
                if len(ys):
                    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
                    out[lyr, b, q] = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w,
                                      (y1 - y0) / h]
    return out


def _check(spec, expect_projection: bool, check_boxes: bool = True):
    hf_model = ref.build_hf_maskformer(spec)
    assert (hf_model.model.transformer_module.input_projection is not None) == expect_projection
    images, mask = random_batch(SIZES, CANVAS)
    theirs = ref.hf_forward_all_layers(hf_model, images, mask)
    # The reference itself: its last layer is HF's own output, and it varies.
    np.testing.assert_allclose(theirs["logits"][-1], theirs["class_queries_logits"], atol=1e-5)
    np.testing.assert_allclose(theirs["masks"][-1], theirs["masks_queries_logits"], atol=1e-5)
    assert theirs["logits"].std(axis=2).mean() > 0.5  # between queries
    assert np.abs(np.diff(theirs["logits"], axis=0)).mean() > 0.1  # between layers
    assert theirs["masks"].std(axis=(3, 4)).mean() > 0.5  # between pixels
    assert theirs["mask_features"].std() > 0.3

    config, model, variables = converted(spec, hf_model)
    assert config.model.transformer.enc_layers == 0
    assert config.model.transformer.dec_layers == spec["decoder_layers"]
    assert config.model.neck.input_proj == expect_projection
    out, features = apply_with_mask_features(model, variables, images, mask)
    d_feat = np.abs(np.asarray(features) - theirs["mask_features"]).max()
    d_logits = np.abs(np.asarray(out["pred_logits"]) - theirs["logits"]).max(axis=(1, 2, 3))
    d_masks = np.abs(np.asarray(out["pred_masks"]) - theirs["masks"]).max(axis=(1, 2, 3, 4))
    print(f"max |mask features diff| {d_feat:.2e}; per layer: |logits diff| {d_logits}, "
          f"|mask logits diff| {d_masks}")
    assert out["pred_masks"].shape == theirs["masks"].shape  # [L, B, Q, 25, 30]
    assert d_feat <= TOL and d_logits.max() <= TOL and d_masks.max() <= TOL
    if check_boxes:
        want = boxes_from_masks_by_hand(theirs["masks"], SIZES)
        got = np.asarray(out["pred_boxes"])
        # Mask logits within the parity tolerance of zero may fall either side: left out.
        near_zero = (np.abs(theirs["masks"]) < 1e-4).any(axis=(3, 4))
        assert near_zero.mean() < 0.2
        np.testing.assert_allclose(got[~near_zero], want[~near_zero], atol=1e-6)
        # Random masks are speckled, so most boxes span the image; some do not, and the
        # padding is left out (tests/ops/test_mask_ops.py has the hand-worked cases).
        assert (want[..., 2] < 0.99).mean() > 0.02 and (want[..., 3] < 0.99).mean() > 0.02


def test_small_maskformer_matches_hf_every_layer():
    """ResNet-18 (width 16), 3 decoder layers, 20 queries, C5 projected to d_model 64."""
    _check(ref.SMALL, expect_projection=True)


def test_maskformer_without_input_projection_matches_hf():
    """C5 with d_model channels: HF has no input projection, nor has ours (input_proj=False)."""
    _check(ref.NO_PROJECTION, expect_projection=False, check_boxes=False)


def encoder_params(encoder, proj) -> dict[str, np.ndarray]:
    """Our `pixel_decoder/{input_proj,encoder_layers_i}` params from the torch modules (HF
    DetrEncoderLayer names, written out here from HF's module names)."""
    sd = {k: v.detach().numpy() for k, v in encoder.state_dict().items()}
    out = {"pixel_decoder/input_proj/kernel": proj.weight.detach().numpy().transpose(2, 3, 1, 0),
           "pixel_decoder/input_proj/bias": proj.bias.detach().numpy()}
    names = {"self_attn.q_proj": "self_attn/q_proj", "self_attn.k_proj": "self_attn/k_proj",
             "self_attn.v_proj": "self_attn/v_proj", "self_attn.o_proj": "self_attn/out_proj",
             "mlp.fc1": "ffn/linear1", "mlp.fc2": "ffn/linear2",
             "self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"}
    for i in range(len(encoder.layers)):
        for theirs, ours in names.items():
            w, b = sd[f"layers.{i}.{theirs}.weight"], sd[f"layers.{i}.{theirs}.bias"]
            dst = f"pixel_decoder/encoder_layers_{i}/{ours}"
            norm = "norm" in ours
            out[f"{dst}/{'scale' if norm else 'kernel'}"] = w if norm else w.T
            out[f"{dst}/bias"] = b
    return out


def test_transformer_encoder_pixel_decoder_matches_hf_parts():
    """enc_layers=2 (the original's TransformerEncoderPixelDecoder, as the COCO panoptic
    models' "+6 Enc"): HF's MaskFormer has no such pixel decoder, so the reference composes
    HF's MaskFormer modules with an HF DetrEncoder the way the original's forward does."""
    spec = ref.NO_PROJECTION  # the decoder reads the encoded map unprojected (conv_dim == D)
    hf_model = ref.build_hf_maskformer(spec)
    encoder, proj = ref.build_pixel_encoder(spec, layers=2)
    images, mask = random_batch(SIZES, CANVAS)
    theirs = ref.hf_forward_with_pixel_encoder(hf_model, encoder, proj, images)
    plain = ref.hf_forward_all_layers(hf_model, images, mask)
    assert np.abs(theirs["logits"] - plain["logits"]).mean() > 0.1  # the encoder matters
    assert theirs["logits"].std(axis=2).mean() > 0.1  # between queries
    assert theirs["masks"].std(axis=(3, 4)).mean() > 0.5  # between pixels

    params, fields = convert_state_dict(ref.state_dict_numpy(hf_model), "hf",
                                        {"model_type": "maskformer", "nheads": spec["heads"]})
    params.update(encoder_params(encoder, proj))
    neck = dict(fields["model.neck"], enc_layers=2, nheads=spec["heads"],
                dim_feedforward=spec["ffn"], dropout=0.0)
    config = config_for({**fields, "model.neck": neck, "model.backbone.mask_features": False})
    assert config.model.neck.input_proj is False
    model = build_model(config)
    variables = {"params": flax.traverse_util.unflatten_dict(params, sep="/")}
    out, features = apply_with_mask_features(model, variables, images, mask)
    d_feat = np.abs(np.asarray(features) - theirs["mask_features"]).max()
    d_logits = np.abs(np.asarray(out["pred_logits"]) - theirs["logits"]).max()
    d_masks = np.abs(np.asarray(out["pred_masks"]) - theirs["masks"]).max()
    print(f"encoder pixel decoder: |mask features| {d_feat:.2e}, |logits| {d_logits:.2e}, "
          f"|mask logits| {d_masks:.2e}")
    assert d_feat <= TOL and d_logits <= TOL and d_masks <= TOL
