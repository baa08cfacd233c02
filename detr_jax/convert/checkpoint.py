"""State_dict (numpy) -> validated params checkpoint that `config.init_from` accepts.

Sources: "facebook" (facebookresearch/detr `model` state_dict, detection or DETRsegm), "hf"
(`DetrForObjectDetection`, `DetrForSegmentation`, `DeformableDetrForObjectDetection`,
`DabDetrForObjectDetection`, `MaskFormerForInstanceSegmentation` or
`Mask2FormerForUniversalSegmentation` with a ResNet, told apart by the HF config's
`model_type` or the keys),
"deformable" (fundamentalvision/Deformable-DETR), "torchvision_resnet" and "hf_resnet"
(classification ResNets, backbone only). No torch here.
"""

from __future__ import annotations

from typing import Any

import flax.traverse_util
import numpy as np

from detr_jax.config_base import base_config, set_field, translate_legacy_fields
from detr_jax.convert.dab import dab_model_fields, hf_dab_to_params, is_dab
from detr_jax.convert.deformable import (
    deformable_model_fields,
    hf_deformable_to_params,
    is_deformable,
    original_deformable_to_params,
)
from detr_jax.convert.detr import (
    FB_BACKBONE,
    HF_BACKBONE,
    detect_layout,
    facebook_to_params,
    hf_to_params,
    infer_model_fields,
    normalise_hf_keys,
)
from detr_jax.convert.detr_segm import (
    detr_segm_heads_fields,
    detr_segm_to_params,
    is_detr_segm,
    split_detr_segm,
)
from detr_jax.convert.mask2former import (
    hf_mask2former_to_params,
    is_mask2former,
    mask2former_model_fields,
)
from detr_jax.convert.maskformer import (
    hf_maskformer_to_params,
    is_maskformer,
    maskformer_model_fields,
)
from detr_jax.models.backbones.resnet_keys import (
    ConversionError,
    convert_resnet_backbone,
    infer_resnet,
)
from detr_jax.pretrained import save_params_checkpoint

SOURCES = ("facebook", "hf", "deformable", "torchvision_resnet", "hf_resnet")


def convert_state_dict(
    state_dict: dict[str, np.ndarray], source: str, hints: dict[str, Any] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Returns (flat params keyed "a/b/c", config fields the weights imply).

    `hints`: what the weights do not show (`model_type` from an HF config.json, `nheads`,
    `num_queries` of a two-stage model, DAB-DETR's `temperature_height` / `_width`; see
    torch_io.load_state_dict). Raises ConversionError
    listing missing and unexpected keys.
    """
    hints = dict(hints or {})
    if source == "hf" and (hints.get("model_type") == "mask2former"
                           or (hints.get("model_type") is None and is_mask2former(state_dict))):
        params, layout = hf_mask2former_to_params(state_dict)
        return params, mask2former_model_fields(params, layout, hints)
    if source == "hf" and (hints.get("model_type") == "maskformer"
                           or (hints.get("model_type") is None and is_maskformer(state_dict))):
        params, layout = hf_maskformer_to_params(state_dict)
        return params, maskformer_model_fields(params, layout, hints)
    if source in ("facebook", "hf") and is_detr_segm(state_dict):  # DETRsegm: heads detr_segm
        params = detr_segm_to_params(state_dict, source)
        det = split_detr_segm(state_dict)[0]
        if source == "hf":
            det = normalise_hf_keys(det)
        prefix, layout = ((FB_BACKBONE, "torchvision") if source == "facebook"
                          else (HF_BACKBONE, detect_layout(det, HF_BACKBONE)))
        fields = infer_model_fields(params, infer_resnet(det, prefix, layout))
        return params, {**fields, **detr_segm_heads_fields(params)}
    if source == "hf" and (hints.get("model_type") == "dab-detr"
                           or (hints.get("model_type") is None and is_dab(state_dict))):
        params, layout = hf_dab_to_params(state_dict)
        return params, dab_model_fields(params, layout, hints)
    if source == "hf" and (hints.get("model_type") == "deformable_detr"
                           or (hints.get("model_type") is None and is_deformable(state_dict))):
        params, layout = hf_deformable_to_params(state_dict)
        return params, deformable_model_fields(params, layout, hints)
    if source == "deformable":
        params, layout = original_deformable_to_params(state_dict)
        return params, deformable_model_fields(params, layout, hints)
    if source == "facebook":
        params = facebook_to_params(state_dict)
        arch = infer_resnet(state_dict, FB_BACKBONE, "torchvision")
        return params, infer_model_fields(params, arch)
    if source == "hf":
        sd = normalise_hf_keys(state_dict)
        params = hf_to_params(sd)
        arch = infer_resnet(sd, HF_BACKBONE, detect_layout(sd, HF_BACKBONE))
        return params, infer_model_fields(params, arch)
    if source in ("torchvision_resnet", "hf_resnet"):
        layout = "torchvision" if source == "torchvision_resnet" else "hf"
        params, fields = convert_resnet_backbone(state_dict, layout=layout)
        return params, {f"model.{k}": v for k, v in fields.items()}
    raise ValueError(f"source={source!r}; choose one of {SOURCES}")


def config_for(fields: dict[str, Any], **model_overrides: Any):
    """base_config() with `fields` (dotted names) and `model.<k>` overrides applied.

    Old field names (`config_base.LEGACY_FIELDS`, e.g. an older meta.json's `model.backbone`,
    or `nheads=4` for `model.transformer.nheads`) are set at their new place.
    """
    config = base_config()
    config.model.backbone.norm = "frozen_bn"
    overrides = {f"model.{k}": v for k, v in model_overrides.items()}
    for k, v in {**translate_legacy_fields(fields), **translate_legacy_fields(overrides)}.items():
        set_field(config, k, v)
    return config


def check_against_model(params: dict[str, np.ndarray], config, backbone_only: bool) -> None:
    """Raises ConversionError unless `params` has exactly the model's keys and shapes.

    With `backbone_only`, only the model's `backbone/...` params are compared.
    """
    from detr_jax.models import build_model, variable_shapes  # local: keeps module import light

    shapes = variable_shapes(build_model(config))["params"]
    expected = {
        k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(shapes, sep="/").items()
    }
    if backbone_only:
        expected = {k: v for k, v in expected.items() if k.startswith("backbone/")}
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    bad = [
        f"{k}: converted {tuple(params[k].shape)} vs model {expected[k]}"
        for k in sorted(set(params) & set(expected))
        if tuple(params[k].shape) != expected[k]
    ]
    if missing or unexpected or bad:
        raise ConversionError(
            f"converted params do not fit the model: missing {missing}, unexpected "
            f"{unexpected}, wrong shapes {bad}"
        )


def write_checkpoint(
    out_dir: str,
    params: dict[str, np.ndarray],
    fields: dict[str, Any],
    source: str,
    nheads: int = 8,
    dilation: bool = False,
) -> str:
    """Validates the converted params against the model they imply and writes them to `out_dir`.

    The checkpoint's `meta.json` lists the implied config fields (`config_fields`), including
    `model.transformer.nheads`, `model.backbone.dilation`, `model.backbone.norm = "frozen_bn"` and
    `model.backbone.mask_features = False` (the original's forward pass).
    """
    fields = dict(fields)
    backbone_only = source.endswith("_resnet")
    if not backbone_only:
        fields.update({"model.transformer.nheads": int(nheads),
                       "model.backbone.dilation": bool(dilation)})
    fields["model.backbone.norm"] = "frozen_bn"
    # The weights were trained on unmasked backbone activations (as the original computes).
    fields["model.backbone.mask_features"] = False
    check_against_model(params, config_for(fields), backbone_only)
    meta = {"source": source, "backbone_only": backbone_only, "config_fields": fields}
    return save_params_checkpoint(out_dir, params, meta)
