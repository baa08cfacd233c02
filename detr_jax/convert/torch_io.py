"""Reading PyTorch checkpoints into numpy state_dicts. The only module here that imports torch.

Accepted inputs: a `.pth`/`.pt`/`.bin` file (a state_dict, or `{'model': state_dict, 'args': ...}`
as facebookresearch/detr saves), a `.safetensors` file, or a Hugging Face model directory
(`config.json` plus `model.safetensors` or `pytorch_model.bin`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _to_numpy(sd: dict) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
        out[k] = np.asarray(v)
    return out


def _load_file(path: str) -> tuple[dict, dict]:
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path), {}
    import torch  # only here

    obj = torch.load(path, map_location="cpu", weights_only=False)
    extra: dict[str, Any] = {}
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        args = obj.get("args")
        if args is not None:
            extra = {k: getattr(args, k) for k in ("nheads", "dilation") if hasattr(args, k)}
            if getattr(args, "two_stage", False) and hasattr(args, "num_queries"):
                extra["num_queries"] = args.num_queries
        obj = obj["model"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    return obj, extra


def load_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Returns (state_dict as float32/int numpy arrays, hints) where hints may hold `nheads`,
    `dilation`, `model_type`, `num_queries` (two-stage proposals), `temperature_height` /
    `temperature_width` (DAB-DETR) and `downsample_in_bottleneck` (MaskFormer's backbone) (from the
    facebookresearch / fundamentalvision `args`, or an HF directory's config.json)."""
    hints: dict[str, Any] = {}
    if os.path.isdir(path):
        cfg = os.path.join(path, "config.json")
        if os.path.exists(cfg):
            with open(cfg) as f:
                c = json.load(f)
            if "encoder_attention_heads" in c:
                hints["nheads"] = c["encoder_attention_heads"]
            elif "num_attention_heads" in c:  # Mask2Former
                hints["nheads"] = c["num_attention_heads"]
            if "model_type" in c:
                hints["model_type"] = c["model_type"]
            if c.get("two_stage") and "two_stage_num_proposals" in c:
                hints["num_queries"] = c["two_stage_num_proposals"]
            if "dilation" in c:
                hints["dilation"] = bool(c["dilation"])
            for k in ("temperature_height", "temperature_width"):  # DAB-DETR's sine embedding
                if k in c:
                    hints[k] = c[k]
            # MaskFormer: the DETR decoder's and the backbone's configs are nested.
            dec, bb = c.get("decoder_config") or {}, c.get("backbone_config") or {}
            if "decoder_attention_heads" in dec:
                hints["nheads"] = dec["decoder_attention_heads"]
            if "downsample_in_bottleneck" in bb:
                hints["downsample_in_bottleneck"] = bool(bb["downsample_in_bottleneck"])
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
    sd, extra = _load_file(path)
    hints.update(extra)
    return _to_numpy(sd), hints
