"""DETR panoptic / segmentation key maps: the original's DETRsegm and HF `DetrForSegmentation`
-> our params (detection part through convert/detr.py; heads: models/heads/detr_mask.py).

Pure numpy (no torch). Layouts:
- facebookresearch/detr DETRsegm: the detector under `detr.` (facebookresearch keys), plus
  `bbox_attention.{q,k}_linear`, `mask_head.{lay1..lay5, gn1..gn5, adapter1..3, out_lay}`;
- HF transformers 4.x (the hub's facebook/detr-resnet-50-panoptic): the detector under `detr.`
  (HF DetrForObjectDetection keys) and the original's mask-head names;
- HF 5.x: `bbox_attention.{q,k}_proj`, `mask_head.conv{1,2}.{conv,norm}`,
  `mask_head.fpn_stages.{0,1,2}.{fpn_adapter,refine.conv,refine.norm}`, `mask_head.output_conv`
  (renamed to the original's names first, `normalise_mask_keys`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from detr_jax.convert.detr import _linear, facebook_to_params, hf_to_params
from detr_jax.models.torch_keys import ConversionError, KeyReader, conv_kernel

_PREFIX = "detr."
_MASK_PREFIXES = ("bbox_attention.", "mask_head.")
# HF 5.x -> the original's names (the inverse of transformers' DetrForSegmentation renaming).
_HF_V5_MASK_RENAMES = (
    (r"^bbox_attention\.([qk])_proj\.", r"bbox_attention.\1_linear."),
    (r"^mask_head\.conv([12])\.conv\.", r"mask_head.lay\1."),
    (r"^mask_head\.conv([12])\.norm\.", r"mask_head.gn\1."),
    (r"^mask_head\.output_conv\.", "mask_head.out_lay."),
)
_STAGE = re.compile(r"^mask_head\.fpn_stages\.(\d)\.(fpn_adapter|refine\.conv|refine\.norm)\.")


def is_detr_segm(state_dict: dict[str, np.ndarray]) -> bool:
    """True for a DETR segmentation state_dict (any of the layouts above)."""
    return any(k.startswith("mask_head.") for k in state_dict)


def normalise_mask_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF 5.x mask-head keys -> the original's (a no-op on original / HF 4.x keys)."""
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in _HF_V5_MASK_RENAMES:
            k = re.sub(pattern, repl, k)
        m = _STAGE.match(k)
        if m:
            i, part = int(m.group(1)), m.group(2)
            name = {"fpn_adapter": f"adapter{i + 1}", "refine.conv": f"lay{i + 3}",
                    "refine.norm": f"gn{i + 3}"}[part]
            k = f"mask_head.{name}." + k[m.end():]
        out[k] = v
    return out


def split_detr_segm(state_dict: dict[str, np.ndarray]
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """-> (the detector's state_dict without the `detr.` prefix, the mask keys with the
    original's names). Raises ConversionError on keys that belong to neither."""
    det, mask, left = {}, {}, []
    for k, v in normalise_mask_keys(state_dict).items():
        if k.startswith(_PREFIX):
            det[k[len(_PREFIX):]] = v
        elif k.startswith(_MASK_PREFIXES):
            mask[k] = v
        else:
            left.append(k)
    if left:
        raise ConversionError(f"DETR segmentation state_dict: {len(left)} keys outside `detr.`, "
                              f"`bbox_attention.`, `mask_head.`: {left}")
    return det, mask


def mask_head_params(mask_sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The original's `bbox_attention.*` / `mask_head.*` keys -> our flat params."""
    r = KeyReader(mask_sd)
    out: dict[str, np.ndarray] = {}
    for name in ("q_linear", "k_linear"):
        _linear(r, f"bbox_attention.{name}", f"bbox_attention/{name}", out)
    convs = [f"lay{i}" for i in range(1, 6)] + [f"adapter{i}" for i in range(1, 4)] + ["out_lay"]
    for name in convs:
        w, b = r.get(f"mask_head.{name}.weight"), r.get(f"mask_head.{name}.bias")
        if w is not None:
            out[f"mask_head/{name}/kernel"] = conv_kernel(w).astype(np.float32)
        if b is not None:
            out[f"mask_head/{name}/bias"] = b.astype(np.float32)
    for i in range(1, 6):
        w, b = r.get(f"mask_head.gn{i}.weight"), r.get(f"mask_head.gn{i}.bias")
        if w is not None:
            out[f"mask_head/gn{i}/scale"] = w.astype(np.float32)
        if b is not None:
            out[f"mask_head/gn{i}/bias"] = b.astype(np.float32)
    r.raise_if_bad("DETR mask head (bbox_attention, mask_head)")
    return out


def detr_segm_to_params(state_dict: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """A DETR segmentation state_dict -> our flat params; `source` "facebook" or "hf" names
    the detector's layout under `detr.`. Raises ConversionError."""
    det, mask = split_detr_segm(state_dict)
    if source == "facebook":
        params = facebook_to_params(det)
    elif source == "hf":
        params = hf_to_params(det)
    else:
        raise ValueError(f"source={source!r}: DETR segmentation converts from 'facebook' or 'hf'")
    return {**params, **mask_head_params(mask)}


def detr_segm_heads_fields(params: dict[str, np.ndarray]) -> dict[str, Any]:
    """The `model.heads` config the converted mask head implies: nheads = lay1's input
    channels - D (concat of input_proj(C5) and one attention map per head)."""
    d = int(params["query_embed"].shape[1])
    nheads = int(params["mask_head/lay1/kernel"].shape[2]) - d
    return {"model.heads": {"name": "detr_segm", "nheads": nheads,
                            "feature_levels": ["C2", "C3", "C4"]}}
