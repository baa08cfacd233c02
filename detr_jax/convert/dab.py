"""DAB-DETR key map: HF `DabDetrForObjectDetection` (transformers 5.x) -> our params (pure numpy).

HF keys: `model.backbone.conv_encoder.model.<HF ResNet or timm resnet>`,
`model.query_refpoint_embeddings` [Q, 4], `model.patterns` (num_patterns > 0),
`model.input_projection`, `model.encoder.query_scale.layers.{0,1}`, `model.encoder.layers.N.
{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, activation_fn, fc2, final_layer_norm}`,
`model.encoder.norm` (normalize_before), `model.decoder.layers.N.{self_attn.
{self_attn_{query,key}_{content,pos}_proj, self_attn_value_proj, self_attn.output_proj,
self_attn_layer_norm}, cross_attn.{cross_attn_{query,key}_{content,pos}_proj (the query
position projection in layer 0 only unless keep_query_pos), cross_attn_value_proj,
cross_attn_query_pos_sine_proj, cross_attn.output_proj, cross_attn_layer_norm}, mlp.{fc1,
activation_fn, fc2, final_layer_norm}}`, `model.decoder.{layernorm, query_scale, ref_point_head,
ref_anchor_head}`, `class_embed`, `bbox_predictor.layers.{0,1,2}` and its tied copy
`model.decoder.bbox_embed` (one box head refines the anchors and predicts the boxes; a
`save_pretrained` file may keep either name). `activation_fn.weight` [1] is the PReLU slope.

Not in the weights (from an HF config.json, see torch_io.load_state_dict): the heads (`nheads`,
default 8) and the sine temperature (`temperature_height` / `_width`, default 20).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from detr_jax.convert.detr import _count, _ignored, _layernorm, _linear
from detr_jax.models.backbones.resnet_keys import detect_layout, infer_resnet, resnet_params
from detr_jax.models.torch_keys import ConversionError, KeyReader, conv_kernel

HF_BACKBONE = "model.backbone.model."
_RENAMES = ((r"^model\.backbone\.conv_encoder\.model\.", HF_BACKBONE),)

# Per layer, our name (under transformer/encoder_layers_N/) -> HF's (under model.encoder.layers.N.).
_ENCODER_LINEAR = {"self_attn/q_proj": "self_attn.q_proj", "self_attn/k_proj": "self_attn.k_proj",
                   "self_attn/v_proj": "self_attn.v_proj",
                   "self_attn/out_proj": "self_attn.out_proj",
                   "ffn/linear1": "fc1", "ffn/linear2": "fc2"}
_ENCODER_NORM = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
_ENCODER_ACT = "activation_fn"
# Per layer, ours (under transformer/decoder_layers_N/) -> HF's (under model.decoder.layers.N.).
_SA, _CA = "self_attn.self_attn_", "cross_attn.cross_attn_"
_DECODER_LINEAR = {
    "sa_qcontent_proj": _SA + "query_content_proj", "sa_qpos_proj": _SA + "query_pos_proj",
    "sa_kcontent_proj": _SA + "key_content_proj", "sa_kpos_proj": _SA + "key_pos_proj",
    "sa_v_proj": _SA + "value_proj", "self_attn/out_proj": "self_attn.self_attn.output_proj",
    "ca_qcontent_proj": _CA + "query_content_proj", "ca_kcontent_proj": _CA + "key_content_proj",
    "ca_kpos_proj": _CA + "key_pos_proj", "ca_v_proj": _CA + "value_proj",
    "ca_qpos_sine_proj": _CA + "query_pos_sine_proj",
    "cross_attn/out_proj": "cross_attn.cross_attn.output_proj",
    "ffn/linear1": "mlp.fc1", "ffn/linear2": "mlp.fc2",
}
_DECODER_QPOS = ("ca_qpos_proj", _CA + "query_pos_proj")  # layer 0, or all with keep_query_pos
_DECODER_NORM = {"norm1": "self_attn.self_attn_layer_norm",
                 "norm2": "cross_attn.cross_attn_layer_norm", "norm3": "mlp.final_layer_norm"}
_DECODER_ACT = "mlp.activation_fn"
# Whole-transformer MLPs (2 layers each): ours under transformer/ -> HF's.
_MLPS = {"encoder_query_scale": "model.encoder.query_scale",
         "query_scale": "model.decoder.query_scale",
         "ref_point_head": "model.decoder.ref_point_head",
         "ref_anchor_head": "model.decoder.ref_anchor_head"}
_BOX_HEADS = ("bbox_predictor", "model.decoder.bbox_embed")  # tied: one box head


def is_dab(state_dict: dict[str, np.ndarray]) -> bool:
    """True for an HF DAB-DETR state_dict."""
    return "model.query_refpoint_embeddings.weight" in state_dict


def _prelu(r: KeyReader, src: str, dst: str, out: dict) -> None:
    w = r.get(src + ".weight")
    if w is not None:
        if w.size != 1:
            raise ConversionError(f"{src}.weight: PReLU with {w.size} slopes (one supported)")
        out[dst + "/negative_slope"] = w.reshape(()).astype(np.float32)


def _box_head(r: KeyReader, sd: dict, out: dict) -> None:
    """`bbox_embed_0` from `bbox_predictor` (else the decoder's tied copy); both present must be
    equal (our decoder refines with the same head that predicts)."""
    present = [p for p in _BOX_HEADS if f"{p}.layers.0.weight" in sd]
    src = present[0] if present else _BOX_HEADS[0]
    for m in range(3):
        _linear(r, f"{src}.layers.{m}", f"bbox_embed_0/layers_{m}", out)
    for other in present[1:]:
        for k in [k for k in sd if k.startswith(other + ".")]:
            mine = src + k[len(other):]
            if mine in sd and not np.array_equal(np.asarray(sd[k]), np.asarray(sd[mine])):
                raise ConversionError(f"{k} differs from {mine}: DAB-DETR's box heads are tied "
                                      "(bbox_embed_diff_each_layer is not supported)")
            r.used.add(k)


def layout_of(sd: dict[str, np.ndarray]) -> dict[str, Any]:
    """What the keys say about the architecture: layer counts, activation, keep_query_pos,
    pre_norm, modulate_hw, num_patterns."""
    keys = list(sd)
    dec = _count(keys, r"^model\.decoder\.layers\.(\d+)\.")
    return {
        "enc_layers": _count(keys, r"^model\.encoder\.layers\.(\d+)\."),
        "dec_layers": dec,
        "activation": "prelu" if any(".activation_fn.weight" in k for k in keys) else "relu",
        "keep_query_pos": dec > 1 and f"model.decoder.layers.1.{_DECODER_QPOS[1]}.weight" in sd,
        "pre_norm": "model.encoder.norm.weight" in sd,
        "modulate_hw": "model.decoder.ref_anchor_head.layers.0.weight" in sd,
        "num_patterns": int(np.asarray(sd["model.patterns.weight"]).shape[0])
        if "model.patterns.weight" in sd else 0,
    }


def hf_dab_to_params(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """HF `DabDetrForObjectDetection` state_dict -> (our flat params, layout); raises
    ConversionError listing missing and unexpected keys."""
    sd = {}
    for k, v in state_dict.items():
        for pattern, repl in _RENAMES:
            k = re.sub(pattern, repl, k)
        sd[k] = v
    r = KeyReader(sd)
    lay = layout_of(sd)
    bb_layout = detect_layout(sd, HF_BACKBONE)
    lay["backbone"] = infer_resnet(sd, HF_BACKBONE, bb_layout)
    out = resnet_params(r, HF_BACKBONE, bb_layout, lay["backbone"]["depth"])
    out["refpoint_embed"] = r.get("model.query_refpoint_embeddings.weight")
    if lay["num_patterns"]:
        out["patterns"] = r.get("model.patterns.weight")
    w, b = r.get("model.input_projection.weight"), r.get("model.input_projection.bias")
    if w is not None:
        out["input_proj/kernel"] = conv_kernel(w)
    out["input_proj/bias"] = b
    for ours, theirs in _MLPS.items():
        if ours != "ref_anchor_head" or lay["modulate_hw"]:
            for m in range(2):
                _linear(r, f"{theirs}.layers.{m}", f"transformer/{ours}/layers_{m}", out)
    for i in range(lay["enc_layers"]):
        s, d = f"model.encoder.layers.{i}.", f"transformer/encoder_layers_{i}/"
        for ours, theirs in _ENCODER_LINEAR.items():
            _linear(r, s + theirs, d + ours, out)
        for ours, theirs in _ENCODER_NORM.items():
            _layernorm(r, s + theirs, d + ours, out)
        if lay["activation"] == "prelu":
            _prelu(r, s + _ENCODER_ACT, d + "ffn/activation", out)
    if lay["pre_norm"]:
        _layernorm(r, "model.encoder.norm", "transformer/encoder_norm", out)
    for i in range(lay["dec_layers"]):
        s, d = f"model.decoder.layers.{i}.", f"transformer/decoder_layers_{i}/"
        linears = dict(_DECODER_LINEAR)
        if i == 0 or lay["keep_query_pos"]:
            linears[_DECODER_QPOS[0]] = _DECODER_QPOS[1]
        for ours, theirs in linears.items():
            _linear(r, s + theirs, d + ours, out)
        for ours, theirs in _DECODER_NORM.items():
            _layernorm(r, s + theirs, d + ours, out)
        if lay["activation"] == "prelu":
            _prelu(r, s + _DECODER_ACT, d + "ffn/activation", out)
    _layernorm(r, "model.decoder.layernorm", "transformer/decoder_norm", out)
    _linear(r, "class_embed", "class_embed_0", out)
    _box_head(r, sd, out)
    r.raise_if_bad("Hugging Face DabDetrForObjectDetection state_dict", _ignored)
    return {k: np.asarray(v, np.float32) for k, v in out.items() if v is not None}, lay


def dab_model_fields(params: dict[str, np.ndarray], layout: dict, hints: dict) -> dict[str, Any]:
    """Config fields implied by converted DAB-DETR params (whole part sub-dicts).

    `hints` (an HF config.json, or defaults): `nheads` (8), `temperature_height` /
    `temperature_width` (20; our sine embedding has one temperature, so they must agree).
    """
    t_h = float(hints.get("temperature_height", 20))
    t_w = float(hints.get("temperature_width", 20))
    if t_h != t_w:
        raise ConversionError(f"temperature_height={t_h} != temperature_width={t_w}: the sine "
                              "position embedding takes one temperature")
    ffn = params["transformer/encoder_layers_0/ffn/linear1/bias"] if layout["enc_layers"] else (
        params["transformer/decoder_layers_0/ffn/linear1/bias"])
    bb = layout["backbone"]
    return {
        "num_classes": int(params["class_embed_0/bias"].shape[0]),
        "model.backbone.name": f"resnet{bb['depth']}",
        "model.backbone.width": bb["width"],
        "model.hidden_dim": int(params["input_proj/bias"].shape[0]),
        "model.neck": {"name": "single_level", "level": "C5", "position_embedding": "sine",
                       "temperature": t_h},
        "model.transformer": {
            "name": "dab", "nheads": int(hints.get("nheads", 8)),
            "enc_layers": int(layout["enc_layers"]), "dec_layers": int(layout["dec_layers"]),
            "dim_feedforward": int(ffn.shape[0]), "dropout": 0.0, "attention_dropout": 0.0,
            "activation": layout["activation"], "keep_query_pos": bool(layout["keep_query_pos"]),
            "modulate_hw": bool(layout["modulate_hw"]), "pre_norm": bool(layout["pre_norm"]),
        },
        "model.queries": {"name": "anchors", "num_queries": int(params["refpoint_embed"].shape[0]),
                          "num_patterns": int(layout["num_patterns"])},
        "model.heads": {"name": "deformable", "prior_prob": 0.01},
    }
