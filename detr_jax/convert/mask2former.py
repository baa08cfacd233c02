"""Mask2Former key map: HF `Mask2FormerForUniversalSegmentation` (ResNet backbone) -> our params
(pure numpy, no torch).

HF keys (transformers 5.x): `model.pixel_level_module.encoder.<HF ResNet or torchvision
resnet>`, `model.pixel_level_module.decoder.{input_projections.N.{0: conv, 1: GN}, level_embed,
encoder.layers.N.{self_attn.{sampling_offsets,attention_weights,value_proj,output_proj},
self_attn_layer_norm, fc1, fc2, final_layer_norm}, adapter_K.{0,1}, layer_K.{0,1},
mask_projection}`, `model.transformer_module.{queries_embedder, queries_features, level_embed,
decoder.layers.N.{cross_attn.{in_proj_weight,in_proj_bias,out_proj}, cross_attn_layer_norm,
self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2, final_layer_norm},
decoder.layernorm, decoder.mask_predictor.mask_embedder.M.0}`, `class_predictor`
(`criterion.empty_weight` is the loss's, not read).

Ours: the pixel decoder under `pixel_decoder/` (necks/pixel_decoder.py), the decoder under
`transformer/` (transformers/mask2former.py), `query_embed` [Q, 2D] = (queries_embedder |
queries_features) as the `learned` generator with content, `class_embed`, `mask_embed/layers_M`
(heads/mask2former.py). HF's `decoder_layers` counts the prediction before the first layer: it
has `decoder_layers - 1` layers, our `dec_layers`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from detr_jax.convert.detr import _count, _ignored, _layernorm, _linear, _packed_attention
from detr_jax.models.backbones.resnet_keys import detect_layout, infer_resnet, resnet_params
from detr_jax.models.torch_keys import KeyReader, conv_kernel

BACKBONE = "model.pixel_level_module.encoder."
PIXEL = "model.pixel_level_module.decoder."
TRANSFORMER = "model.transformer_module."
_DEFORM = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
_LEVELS = ("C2", "C3", "C4", "C5")


def is_mask2former(state_dict: dict[str, np.ndarray]) -> bool:
    """True for an HF Mask2Former state_dict."""
    return any(k.startswith(TRANSFORMER + "decoder.mask_predictor.") for k in state_dict)


def _conv(r: KeyReader, src: str, dst: str, out: dict) -> None:
    w, b = r.get(src + ".weight"), r.sd.get(src + ".bias")
    if w is not None:
        out[dst + "/kernel"] = conv_kernel(w)
    if b is not None:
        r.used.add(src + ".bias")
        out[dst + "/bias"] = np.asarray(b)


def _group_norm(r: KeyReader, src: str, dst: str, out: dict) -> None:
    w, b = r.get(src + ".weight"), r.get(src + ".bias")
    if w is not None:
        out[dst + "/scale"] = w
    if b is not None:
        out[dst + "/bias"] = b


def _pixel_decoder(r: KeyReader, sd: dict, out: dict) -> dict[str, int]:
    """The pixel decoder's params into `out`; returns its layout (level and layer counts)."""
    keys = list(sd)
    lay = {"encoder_levels": _count(keys, rf"^{re.escape(PIXEL)}input_projections\.(\d+)\."),
           "fpn_levels": len({m.group(1) for k in keys
                              if (m := re.match(rf"^{re.escape(PIXEL)}adapter_(\d+)\.", k))}),
           "enc_layers": _count(keys, rf"^{re.escape(PIXEL)}encoder\.layers\.(\d+)\.")}
    dst = "pixel_decoder/"
    for i in range(lay["encoder_levels"]):
        _conv(r, f"{PIXEL}input_projections.{i}.0", f"{dst}input_proj_{i}/conv", out)
        _group_norm(r, f"{PIXEL}input_projections.{i}.1", f"{dst}input_proj_{i}/norm", out)
    out[dst + "level_embed"] = r.get(PIXEL + "level_embed")
    for i in range(lay["enc_layers"]):
        s, d = f"{PIXEL}encoder.layers.{i}.", f"{dst}encoder_layers_{i}/"
        for name in _DEFORM:
            _linear(r, f"{s}self_attn.{name}", f"{d}self_attn/{name}", out)
        _layernorm(r, s + "self_attn_layer_norm", d + "norm1", out)
        _linear(r, s + "fc1", d + "ffn/linear1", out)
        _linear(r, s + "fc2", d + "ffn/linear2", out)
        _layernorm(r, s + "final_layer_norm", d + "norm2", out)
    for k in range(1, lay["fpn_levels"] + 1):  # HF counts adapter_1.. from 1
        for part in ("adapter", "layer"):
            _conv(r, f"{PIXEL}{part}_{k}.0", f"{dst}{part}_{k}/conv", out)
            _group_norm(r, f"{PIXEL}{part}_{k}.1", f"{dst}{part}_{k}/norm", out)
    _conv(r, PIXEL + "mask_projection", dst + "mask_projection", out)
    return lay


def _self_attention(r: KeyReader, src: str, dst: str, out: dict) -> None:
    """HF Mask2FormerAttention: separate q, k, v and out projections."""
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _linear(r, f"{src}.{name}", f"{dst}/{name}", out)


def _decoder(r: KeyReader, sd: dict, out: dict) -> int:
    """The masked-attention decoder, queries and heads into `out`; returns the layer count."""
    dec = TRANSFORMER + "decoder."
    num = _count(list(sd), rf"^{re.escape(dec)}layers\.(\d+)\.")
    pos, feat = r.get(TRANSFORMER + "queries_embedder.weight"), \
        r.get(TRANSFORMER + "queries_features.weight")
    if pos is not None and feat is not None:
        out["query_embed"] = np.concatenate([pos, feat], axis=1)
    out["transformer/level_embed"] = r.get(TRANSFORMER + "level_embed.weight")
    for i in range(num):
        s, d = f"{dec}layers.{i}.", f"transformer/decoder_layers_{i}/"
        _packed_attention(r, s + "cross_attn", d + "cross_attn", out)
        _layernorm(r, s + "cross_attn_layer_norm", d + "norm1", out)
        _self_attention(r, s + "self_attn", d + "self_attn", out)
        _layernorm(r, s + "self_attn_layer_norm", d + "norm2", out)
        _linear(r, s + "fc1", d + "ffn/linear1", out)
        _linear(r, s + "fc2", d + "ffn/linear2", out)
        _layernorm(r, s + "final_layer_norm", d + "norm3", out)
    _layernorm(r, dec + "layernorm", "transformer/decoder_norm", out)
    for m in range(3):
        _linear(r, f"{dec}mask_predictor.mask_embedder.{m}.0", f"mask_embed/layers_{m}", out)
    _linear(r, "class_predictor", "class_embed", out)
    return num


def hf_mask2former_to_params(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """HF `Mask2FormerForUniversalSegmentation` state_dict (ResNet backbone) -> (our flat
    params, layout). Raises ConversionError listing missing / unexpected keys (a Swin backbone
    is not a ResNet and stops here; so do the decoder's input projections of a model whose
    `feature_size` differs from `hidden_dim`, which ours does not have)."""
    sd = state_dict
    r = KeyReader(sd)
    bb_layout = detect_layout(sd, BACKBONE)
    lay: dict[str, Any] = {"backbone": infer_resnet(sd, BACKBONE, bb_layout)}
    out = resnet_params(r, BACKBONE, bb_layout, lay["backbone"]["depth"])
    lay.update(_pixel_decoder(r, sd, out))
    lay["dec_layers"] = _decoder(r, sd, out)
    r.raise_if_bad("Hugging Face Mask2FormerForUniversalSegmentation state_dict",
                   lambda k: _ignored(k) or k == "criterion.empty_weight")
    return {k: np.asarray(v, np.float32) for k, v in out.items() if v is not None}, lay


def mask2former_model_fields(params: dict[str, np.ndarray], layout: dict, hints: dict
                             ) -> dict[str, Any]:
    """Config fields implied by converted Mask2Former params (whole part sub-dicts).

    `hints` (an HF config.json, or defaults): `nheads` (8, HF `num_attention_heads`; the
    encoder's sampling points then follow from the weights).
    """
    nheads = int(hints.get("nheads", 8))
    d = int(params["transformer/level_embed"].shape[1])
    n_enc = int(layout["encoder_levels"])
    n_levels = n_enc + int(layout["fpn_levels"])
    pd = "pixel_decoder/encoder_layers_0/"
    enc_ffn = int(params[pd + "ffn/linear1/bias"].shape[0]) if layout["enc_layers"] else 1024
    points = (int(params[pd + "self_attn/attention_weights/bias"].shape[0]) // (nheads * n_enc)
              if layout["enc_layers"] else 4)
    dec_ffn = (int(params["transformer/decoder_layers_0/ffn/linear1/bias"].shape[0])
               if layout["dec_layers"] else 2048)
    bb = layout["backbone"]
    return {
        "num_classes": int(params["class_embed/bias"].shape[0]) - 1,
        "model.backbone.name": f"resnet{bb['depth']}",
        "model.backbone.width": bb["width"],
        "model.hidden_dim": d,
        "model.neck": {
            "name": "mask2former_pixel_decoder",
            "mask_dim": int(params["pixel_decoder/mask_projection/bias"].shape[0]),
            "levels": list(_LEVELS[-n_levels:]), "encoder_levels": n_enc,
            "enc_layers": int(layout["enc_layers"]), "nheads": nheads, "enc_points": points,
            "dim_feedforward": enc_ffn, "dropout": 0.0, "num_groups": 32,
            "remat_sampling": False, "sampling_chunk": 0,  # memory options, not in the weights
        },
        "model.transformer": {
            "name": "mask2former", "nheads": nheads, "dec_layers": int(layout["dec_layers"]),
            "dim_feedforward": dec_ffn, "dropout": 0.0, "attention_impl": "xla",
        },
        "model.queries": {"name": "learned", "num_queries": int(params["query_embed"].shape[0]),
                          "init_std": 1.0, "num_groups": 1, "with_content": True},
        "model.heads": {"name": "mask2former"},
    }
