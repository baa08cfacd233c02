"""Deformable DETR key maps: HF `DeformableDetrForObjectDetection` and the fundamentalvision/
Deformable-DETR checkpoint layout -> our params (pure numpy, no torch).

fundamentalvision keys: `backbone.0.body.<torchvision resnet>`, `input_proj.N.{0: conv, 1: GN}`,
`query_embed` [Q, 2D] (one-stage), `transformer.level_embed`, `transformer.reference_points`
or (two-stage) `transformer.{enc_output,enc_output_norm,pos_trans,pos_trans_norm}`,
`transformer.encoder.layers.N.{self_attn.{sampling_offsets,attention_weights,value_proj,
output_proj},norm1,linear1,linear2,norm2}`, `transformer.decoder.layers.N.{cross_attn.*,norm1,
self_attn.{in_proj_weight,in_proj_bias,out_proj},norm2,linear1,linear2,norm3}`,
`class_embed.N`, `bbox_embed.N.layers.M` (with refinement / two-stage also repeated under
`transformer.decoder.{bbox_embed,class_embed}`).

HF keys (transformers 5.x): `model.backbone.model.<HF ResNet or timm resnet>`,
`model.input_proj.N.{0,1}`, `model.query_position_embeddings`, `model.level_embed`,
`model.reference_points` / `model.{enc_output,...}`, `model.encoder.layers.N.{self_attn.*,
self_attn_layer_norm, mlp.fc1, mlp.fc2, final_layer_norm}`, `model.decoder.layers.N.{self_attn.
{q,k,v,o}_proj, self_attn_layer_norm, encoder_attn.*, encoder_attn_layer_norm, mlp.*,
final_layer_norm}`, `class_embed.N`, `bbox_embed.N.layers.M` (and `model.decoder.*_embed`).

Heads: without refinement every layer shares head 0 (the checkpoints repeat it); with
refinement head i serves layer i (and head L the two-stage proposals).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np

from detr_jax.convert.detr import (
    _count,
    _ignored,
    _layernorm,
    _linear,
    _packed_attention,
    _split_attention,
    normalise_hf_keys,
)
from detr_jax.models.backbones.resnet_keys import detect_layout, infer_resnet, resnet_params
from detr_jax.models.torch_keys import KeyReader, conv_kernel

FB_BACKBONE = "backbone.0.body."
HF_BACKBONE = "model.backbone.model."
_DEFORM = ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
_LEVELS = ("C2", "C3", "C4", "C5")


def is_deformable(state_dict: dict[str, np.ndarray]) -> bool:
    """True for a Deformable DETR state_dict (either layout)."""
    return any(".sampling_offsets." in k for k in state_dict)


def _deform_attention(r: KeyReader, src: str, dst: str, out: dict) -> None:
    for name in _DEFORM:
        _linear(r, f"{src}.{name}", f"{dst}/{name}", out)


def _input_proj(r: KeyReader, prefix: str, num: int, out: dict) -> None:
    for i in range(num):
        w, b = r.get(f"{prefix}{i}.0.weight"), r.get(f"{prefix}{i}.0.bias")
        if w is not None:
            out[f"input_proj_{i}/conv/kernel"] = conv_kernel(w).astype(np.float32)
        if b is not None:
            out[f"input_proj_{i}/conv/bias"] = b.astype(np.float32)
        gw, gb = r.get(f"{prefix}{i}.1.weight"), r.get(f"{prefix}{i}.1.bias")
        if gw is not None:
            out[f"input_proj_{i}/norm/scale"] = gw.astype(np.float32)
        if gb is not None:
            out[f"input_proj_{i}/norm/bias"] = gb.astype(np.float32)


def _heads(r: KeyReader, sd: dict, refine: bool, two_stage: bool, num_layers: int,
           dup_prefix: str, out: dict) -> None:
    """Head i from `class_embed.i` / `bbox_embed.i`, else from the decoder's copy
    (`<dup_prefix>class_embed.i`), else head 0: HF's `save_pretrained` keeps one key of each
    tied group (the decoder's copies with refinement / two-stage, class head 0 when HF ties
    the class heads)."""
    count = num_layers + int(two_stage) if refine else 1

    def source(kind: str, i: int, suffix: str) -> str:
        for base in (f"{kind}.{i}", f"{dup_prefix}{kind}.{i}", f"{kind}.0",
                     f"{dup_prefix}{kind}.0"):
            if base + suffix in sd:
                return base
        return f"{kind}.{i}"  # missing: reported by the reader

    for i in range(count):
        _linear(r, source("class_embed", i, ".weight"), f"class_embed_{i}", out)
        box = source("bbox_embed", i, ".layers.0.weight")
        for m in range(3):
            _linear(r, f"{box}.layers.{m}", f"bbox_embed_{i}/layers_{m}", out)
    # The rest are copies: the shared head repeated, and the decoder's references to the heads.
    for k in sd:
        if re.match(rf"^(class_embed|bbox_embed|{re.escape(dup_prefix)}(class|bbox)_embed)\.", k):
            r.used.add(k)


def _layout(sd: dict, body: str, proj: str) -> dict[str, Any]:
    """Refinement, two-stage and the level / layer counts, read off the keys (`body`: the
    transformer's prefix, `proj`: the input projections')."""
    keys = list(sd)
    return {
        "refine": any(k.startswith(body + "decoder.bbox_embed.") for k in keys),
        "two_stage": body + "enc_output.weight" in sd,
        "num_levels": _count(keys, rf"^{re.escape(proj)}input_proj\.(\d+)\."),
        "num_layers": _count(keys, rf"^{re.escape(body)}decoder\.layers\.(\d+)\."),
    }


def _levels(sd: dict, prefix: str, num: int) -> int:
    """How many input projections are 1x1 (backbone levels); the rest are 3x3 extra levels."""
    return sum(np.asarray(sd[f"{prefix}input_proj.{i}.0.weight"]).shape[-1] == 1
               for i in range(num))


class _Names(NamedTuple):
    """One checkpoint layout's names: prefixes, and per layer our name -> theirs."""

    what: str  # for error messages
    body: str  # the transformer's prefix
    proj: str  # the input projections' prefix
    backbone: str
    level_embed: str
    query_embed: str
    encoder: dict[str, str]  # self_attn, norm1, linear1, linear2, norm2
    decoder: dict[str, str]  # self_attn, norm2, cross_attn, norm1, linear1, linear2, norm3
    self_attn: Any  # _split_attention (q/k/v/o) or _packed_attention (in_proj)


_HF = _Names(
    "Hugging Face DeformableDetrForObjectDetection state_dict", "model.", "model.", HF_BACKBONE,
    "model.level_embed", "model.query_position_embeddings.weight",
    {"self_attn": "self_attn", "norm1": "self_attn_layer_norm", "linear1": "mlp.fc1",
     "linear2": "mlp.fc2", "norm2": "final_layer_norm"},
    {"self_attn": "self_attn", "norm2": "self_attn_layer_norm", "cross_attn": "encoder_attn",
     "norm1": "encoder_attn_layer_norm", "linear1": "mlp.fc1", "linear2": "mlp.fc2",
     "norm3": "final_layer_norm"},
    _split_attention,
)
_ORIGINAL = _Names(
    "fundamentalvision/Deformable-DETR state_dict", "transformer.", "", FB_BACKBONE,
    "transformer.level_embed", "query_embed.weight",
    {k: k for k in ("self_attn", "norm1", "linear1", "linear2", "norm2")},
    {k: k for k in ("self_attn", "norm2", "cross_attn", "norm1", "linear1", "linear2", "norm3")},
    _packed_attention,
)


def _to_params(sd: dict[str, np.ndarray], n: _Names) -> tuple[dict, dict]:
    """A state_dict in layout `n` -> (our flat params, layout); raises ConversionError."""
    r = KeyReader(sd)
    lay = _layout(sd, n.body, n.proj)
    bb_layout = detect_layout(sd, n.backbone)
    lay["backbone"] = infer_resnet(sd, n.backbone, bb_layout)
    out = resnet_params(r, n.backbone, bb_layout, lay["backbone"]["depth"])
    _input_proj(r, f"{n.proj}input_proj.", lay["num_levels"], out)
    out["level_embed"] = r.get(n.level_embed)
    if not lay["two_stage"]:
        out["query_embed"] = r.get(n.query_embed)
        _linear(r, f"{n.body}reference_points", "transformer/reference_points", out)
    else:
        for name in ("enc_output", "pos_trans"):
            _linear(r, f"{n.body}{name}", f"transformer/{name}", out)
            _layernorm(r, f"{n.body}{name}_norm", f"transformer/{name}_norm", out)
    enc, dec = n.encoder, n.decoder
    for i in range(_count(sd, rf"^{re.escape(n.body)}encoder\.layers\.(\d+)\.")):
        s, d = f"{n.body}encoder.layers.{i}.", f"transformer/encoder_layers_{i}/"
        _deform_attention(r, s + enc["self_attn"], d + "self_attn", out)
        for ours in ("linear1", "linear2"):
            _linear(r, s + enc[ours], d + "ffn/" + ours, out)
        for ours in ("norm1", "norm2"):
            _layernorm(r, s + enc[ours], d + ours, out)
    for i in range(lay["num_layers"]):
        s, d = f"{n.body}decoder.layers.{i}.", f"transformer/decoder_layers_{i}/"
        n.self_attn(r, s + dec["self_attn"], d + "self_attn", out)
        _deform_attention(r, s + dec["cross_attn"], d + "cross_attn", out)
        for ours in ("linear1", "linear2"):
            _linear(r, s + dec[ours], d + "ffn/" + ours, out)
        for ours in ("norm1", "norm2", "norm3"):
            _layernorm(r, s + dec[ours], d + ours, out)
    _heads(r, sd, lay["refine"], lay["two_stage"], lay["num_layers"], f"{n.body}decoder.", out)
    r.raise_if_bad(n.what, _ignored)
    lay["backbone_levels"] = _levels(sd, n.proj, lay["num_levels"])
    return {k: v.astype(np.float32) for k, v in out.items() if v is not None}, lay


def hf_deformable_to_params(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """HF `DeformableDetrForObjectDetection` state_dict -> (our flat params, layout).

    `save_pretrained` files carry the 4.x backbone prefix (`model.backbone.conv_encoder.model.`),
    renamed first as for DETR (`normalise_hf_keys`)."""
    return _to_params(normalise_hf_keys(state_dict), _HF)


def original_deformable_to_params(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """fundamentalvision/Deformable-DETR `model` state_dict -> (our flat params, layout)."""
    return _to_params(state_dict, _ORIGINAL)


def deformable_model_fields(params: dict[str, np.ndarray], layout: dict, hints: dict
                            ) -> dict[str, Any]:
    """Config fields implied by converted Deformable DETR params (whole part sub-dicts).

    `hints` (an HF config.json, or defaults): `nheads` (8), `enc_points` / `dec_points` (from
    the weights once the heads are known), `num_queries` for two-stage (300).
    """
    keys = list(params)
    d = int(params["level_embed"].shape[1])
    nheads = int(hints.get("nheads", 8))
    levels = int(params["level_embed"].shape[0])
    n_back = int(layout["backbone_levels"])

    def points(layer: str) -> int:
        rows = params[f"transformer/{layer}/attention_weights/bias"].shape[0]
        return int(rows) // (nheads * levels)

    ffn = [k for k in keys if k.endswith("ffn/linear1/bias")]
    if layout["two_stage"]:
        queries = {"name": "encoder_proposals", "num_queries": int(hints.get("num_queries", 300))}
    else:
        queries = {"name": "learned", "num_queries": int(params["query_embed"].shape[0]),
                   "with_content": True}
    bb = layout["backbone"]
    return {
        "num_classes": int(params["class_embed_0/bias"].shape[0]),
        "model.backbone.name": f"resnet{bb['depth']}",
        "model.backbone.width": bb["width"],
        "model.hidden_dim": d,
        "model.neck": {"name": "multi_scale", "levels": list(_LEVELS[-n_back:]),
                       "extra_levels": levels - n_back, "num_groups": 32},
        "model.transformer": {
            "name": "deformable", "nheads": nheads,
            "enc_layers": _count(keys, r"transformer/encoder_layers_(\d+)/"),
            "dec_layers": int(layout["num_layers"]),
            "dim_feedforward": int(params[ffn[0]].shape[0]), "dropout": 0.1,
            "enc_points": points("encoder_layers_0/self_attn"),
            "dec_points": points("decoder_layers_0/cross_attn"),
            "box_refine": bool(layout["refine"]), "two_stage": bool(layout["two_stage"]),
            "remat_sampling": False, "sampling_chunk": 0,  # memory options, not in the weights
        },
        "model.queries": queries,
        "model.heads": {"name": "deformable"},
    }
