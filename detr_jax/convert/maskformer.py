"""MaskFormer key map: HF `MaskFormerForInstanceSegmentation` (ResNet backbone) -> our params
(pure numpy, no torch).

HF keys (transformers 5.x): `model.pixel_level_module.encoder.<HF ResNetBackbone: embedder.*,
encoder.stages.*>`, `model.pixel_level_module.decoder.fpn.stem.{0: conv, 1: GN}`,
`...decoder.fpn.layers.{0,1,2}.{proj.{0: 1x1 conv, 1: GN}, block.{0: conv, 1: GN}}` (C4, C3,
C2 in that order), `...decoder.mask_projection`, `model.transformer_module.queries_embedder`,
`model.transformer_module.input_projection` (absent when C5 already has D channels: then the
neck's `input_proj=False`), `model.transformer_module.decoder.layers.N.*` and
`.decoder.layernorm` (DETR's decoder, as in detr.py), `class_predictor`,
`mask_embedder.{0,1,2}.0`; 4.x names (`out_proj`, `fc1`, as `save_pretrained` writes them)
are renamed first. The loss buffer `criterion.empty_weight` is not a parameter.

Swin backbones (HF's MaskFormer checkpoints on the hub) have no backbone part here yet; their
state_dicts are refused with a line saying so.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from detr_jax.convert.detr import _count, _layernorm, _linear, _split_attention
from detr_jax.models.backbones.resnet_keys import infer_resnet, resnet_params
from detr_jax.models.torch_keys import ConversionError, KeyReader, conv_kernel

BACKBONE = "model.pixel_level_module.encoder."
PIXEL = "model.pixel_level_module.decoder."
MODULE = "model.transformer_module."
_FPN_LEVELS = ("C4", "C3", "C2")  # HF fpn.layers.0, 1, 2


_V4_RENAMES = (  # transformers 4.x names, which save_pretrained still writes
    (r"\.(self_attn|encoder_attn)\.out_proj\.", r".\1.o_proj."),
    (r"^(model\.transformer_module\.decoder\.layers\.\d+)\.(fc1|fc2)\.", r"\1.mlp.\2."),
)


def normalise_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames transformers 4.x MaskFormer decoder keys to the 5.x names (a no-op on 5.x)."""
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in _V4_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def is_maskformer(state_dict: dict[str, np.ndarray]) -> bool:
    """True for an HF MaskFormer state_dict (`MaskFormerForInstanceSegmentation`)."""
    return any(k.startswith("model.pixel_level_module.") for k in state_dict)


def _conv(r: KeyReader, src: str, dst: str, out: dict, bias: bool) -> None:
    w = r.get(src + ".weight")
    if w is not None:
        out[dst + "/kernel"] = conv_kernel(w).astype(np.float32)
    if bias:
        b = r.get(src + ".bias")
        if b is not None:
            out[dst + "/bias"] = b.astype(np.float32)


def _group_norm(r: KeyReader, src: str, dst: str, out: dict) -> None:
    w, b = r.get(src + ".weight"), r.get(src + ".bias")
    if w is not None:
        out[dst + "/scale"] = w.astype(np.float32)
    if b is not None:
        out[dst + "/bias"] = b.astype(np.float32)


def _conv_norm(r: KeyReader, src: str, dst: str, out: dict) -> None:
    """HF `Sequential(conv (no bias), GroupNorm[, ReLU])` -> our `ConvNorm` {conv, norm}."""
    _conv(r, src + ".0", dst + "/conv", out, bias=False)
    _group_norm(r, src + ".1", dst + "/norm", out)


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked") or key == "criterion.empty_weight"


def hf_maskformer_to_params(state_dict: dict[str, np.ndarray]) -> tuple[dict, dict[str, Any]]:
    """HF `MaskFormerForInstanceSegmentation` state_dict -> (our flat params, layout).

    `layout`: `backbone` ({depth, width}), `num_layers`, `conv_dim`, `mask_dim`,
    `input_projection` (False: HF had none). Raises ConversionError
    (missing / unexpected keys, or a non-ResNet backbone).
    """
    sd = normalise_keys(state_dict)
    if BACKBONE + "embedder.embedder.convolution.weight" not in sd:
        swin = any(k.startswith(BACKBONE) and ".patch_embeddings." in k for k in sd)
        found = "a Swin backbone" if swin else "no HF ResNet backbone"
        raise ConversionError(
            f"HF MaskFormer state_dict has {found} under {BACKBONE!r}; only HF ResNet "
            "backbones convert (no Swin backbone part yet)")
    r = KeyReader(sd)
    arch = infer_resnet(sd, BACKBONE, "hf")
    out = resnet_params(r, BACKBONE, "hf", arch["depth"])
    fpn = PIXEL + "fpn."
    _conv_norm(r, fpn + "stem", "pixel_decoder/stem", out)
    for i, level in enumerate(_FPN_LEVELS):
        _conv_norm(r, f"{fpn}layers.{i}.proj", f"pixel_decoder/lateral_{level}", out)
        _conv_norm(r, f"{fpn}layers.{i}.block", f"pixel_decoder/output_{level}", out)
    _conv(r, PIXEL + "mask_projection", "pixel_decoder/mask_projection", out, bias=True)
    queries = r.get(MODULE + "queries_embedder.weight")
    if queries is not None:
        out["query_embed"] = queries.astype(np.float32)
    has_proj = MODULE + "input_projection.weight" in sd  # else C5 has D channels, read as is
    if has_proj:
        _conv(r, MODULE + "input_projection", "input_proj", out, bias=True)
    body = MODULE + "decoder."
    num_layers = _count(sd, rf"^{re.escape(body)}layers\.(\d+)\.")
    for i in range(num_layers):
        s, t = f"{body}layers.{i}", f"transformer/decoder_layers_{i}"
        _split_attention(r, s + ".self_attn", t + "/self_attn", out)
        _layernorm(r, s + ".self_attn_layer_norm", t + "/norm1", out)
        _split_attention(r, s + ".encoder_attn", t + "/multihead_attn", out)
        _layernorm(r, s + ".encoder_attn_layer_norm", t + "/norm2", out)
        _linear(r, s + ".mlp.fc1", t + "/ffn/linear1", out)
        _linear(r, s + ".mlp.fc2", t + "/ffn/linear2", out)
        _layernorm(r, s + ".final_layer_norm", t + "/norm3", out)
    _layernorm(r, body + "layernorm", "transformer/decoder_norm", out)
    _linear(r, "class_predictor", "class_embed", out)
    for i in range(_count(sd, r"^mask_embedder\.(\d+)\.")):
        _linear(r, f"mask_embedder.{i}.0", f"mask_embed/layers_{i}", out)
    r.raise_if_bad("Hugging Face MaskFormerForInstanceSegmentation state_dict", _ignored)
    layout = {
        "backbone": arch, "num_layers": num_layers, "input_projection": has_proj,
        "conv_dim": int(out["pixel_decoder/stem/conv/kernel"].shape[-1]),
        "mask_dim": int(out["pixel_decoder/mask_projection/kernel"].shape[-1]),
        "mask_layers": _count(out, r"^mask_embed/layers_(\d+)/"),
    }
    return out, layout


def maskformer_model_fields(params: dict[str, np.ndarray], layout: dict[str, Any],
                            hints: dict[str, Any]) -> dict[str, Any]:
    """Config fields implied by converted MaskFormer params (whole part sub-dicts).

    `hints` (an HF config.json, see torch_io.load_state_dict): `nheads` (default 8);
    `downsample_in_bottleneck` True (stride in the bottleneck's 1x1 conv) is refused: our
    ResNet strides in the 3x3 conv, as torchvision.
    """
    if hints.get("downsample_in_bottleneck"):
        raise ConversionError(
            "HF MaskFormer backbone_config.downsample_in_bottleneck=True (stride in the 1x1 "
            "conv) does not fit our ResNet (torchvision style: stride in the 3x3 conv)")
    bb = layout["backbone"]
    return {
        "num_classes": int(params["class_embed/bias"].shape[0]) - 1,
        "model.backbone.name": f"resnet{bb['depth']}",
        "model.backbone.width": bb["width"],
        "model.hidden_dim": int(params["query_embed"].shape[1]),
        "model.neck": {"name": "maskformer_fpn", "conv_dim": layout["conv_dim"],
                       "mask_dim": layout["mask_dim"], "num_groups": 32, "enc_layers": 0,
                       "input_proj": bool(layout["input_projection"]), "mask_padding": False},
        "model.transformer": {
            "name": "detr", "nheads": int(hints.get("nheads", 8)), "enc_layers": 0,
            "dec_layers": int(layout["num_layers"]),
            "dim_feedforward": int(params["transformer/decoder_layers_0/ffn/linear1/bias"]
                                   .shape[0]) if layout["num_layers"] else 2048,
            "dropout": 0.1, "pre_norm": False,
        },
        "model.queries": {"name": "learned",
                          "num_queries": int(params["query_embed"].shape[0])},
        "model.heads": {"name": "maskformer", "mask_layers": int(layout["mask_layers"])},
    }
