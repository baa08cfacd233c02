"""The ResNet backbone's PyTorch key maps: torchvision and Hugging Face ResNet layouts -> our
`backbone/...` params (used by `python -m detr_jax.convert`).

Pure numpy (no torch). A state_dict here is `dict[str, np.ndarray]` in PyTorch layout: convolution
weights OIHW, linear weights [out, in]. Our params are a flat `dict[str, np.ndarray]` keyed by
"/"-joined paths (`backbone/layer1_0/conv1/kernel`, HWIO), see detr_jax/models/backbones/resnet.py.

torchvision layout (also the facebookresearch/detr `backbone.0.body.` and timm layouts):
  conv1.weight, bn1.{weight,bias,running_mean,running_var}, layerS.B.convI.weight, layerS.B.bnI.*,
  layerS.B.downsample.0.weight, layerS.B.downsample.1.*
Hugging Face ResNet layout (`ResNetModel` / `ResNetBackbone`):
  embedder.embedder.{convolution,normalization}, encoder.stages.S-1.layers.B.layer.I-1.{...},
  encoder.stages.S-1.layers.B.shortcut.{convolution,normalization}
"""

from __future__ import annotations

import re

import numpy as np

from detr_jax.models.backbones.resnet import RESNET_SPECS
from detr_jax.models.torch_keys import ConversionError, KeyReader, conv_kernel

BN_ARRAYS = ("weight", "bias", "running_mean", "running_var")
LAYOUTS = ("torchvision", "hf")


def _put(out: dict, key: str, value: np.ndarray | None, fn=None) -> None:
    if value is not None:
        out[key] = (fn(value) if fn else value).astype(np.float32)


def _stage_blocks(keys, pattern: str) -> tuple[int, int, int, int]:
    """Blocks per stage from keys matching `pattern` (groups: stage 1..4, block)."""
    counts = [0, 0, 0, 0]
    for k in keys:
        m = re.match(pattern, k)
        if m:
            s, b = int(m.group(1)), int(m.group(2))
            counts[s - 1] = max(counts[s - 1], b + 1)
    return tuple(counts)  # type: ignore[return-value]


def infer_resnet(state_dict: dict[str, np.ndarray], prefix: str, layout: str) -> dict[str, int]:
    """Depth (18/34/50/101) and stem width of a ResNet state_dict under `prefix`."""
    keys = [k[len(prefix) :] for k in state_dict if k.startswith(prefix)]
    if layout == "torchvision":
        blocks = _stage_blocks(keys, r"layer(\d)\.(\d+)\.")
        bottleneck = any(re.match(r"layer1\.0\.conv3\.weight$", k) for k in keys)
        stem = prefix + "conv1.weight"
    elif layout == "hf":
        blocks = _stage_blocks(
            [
                re.sub(r"^encoder\.stages\.(\d)", lambda m: f"s{int(m.group(1)) + 1}", k)
                for k in keys
            ],
            r"s(\d)\.layers\.(\d+)\.",
        )
        bottleneck = any(k.startswith("encoder.stages.0.layers.0.layer.2.") for k in keys)
        stem = prefix + "embedder.embedder.convolution.weight"
    else:
        raise ValueError(f"layout={layout!r}; choose one of {LAYOUTS}")
    kind = "bottleneck" if bottleneck else "basic"
    depth = [d for d, spec in RESNET_SPECS.items() if spec == (kind, blocks)]
    if not depth or stem not in state_dict:
        raise ConversionError(
            f"no ResNet-18/34/50/101 under prefix {prefix!r} ({layout} layout): found {kind} "
            f"blocks {blocks}; stem key {stem!r} {'present' if stem in state_dict else 'missing'}"
        )
    return {"depth": depth[0], "width": int(state_dict[stem].shape[0])}


def resnet_params(
    reader: KeyReader, prefix: str, layout: str, depth: int, out_prefix: str = "backbone/"
) -> dict[str, np.ndarray]:
    """Our flat backbone params from a torchvision- or HF-layout ResNet under `prefix`.

    BatchNorm arrays keep the PyTorch names (our FrozenBatchNorm params); `num_batches_tracked`
    is not read (callers ignore it).
    """
    kind, blocks = RESNET_SPECS[depth]
    n_convs = 3 if kind == "bottleneck" else 2
    out: dict[str, np.ndarray] = {}

    def conv_bn(ours: str, conv_key: str, bn_key: str) -> None:
        _put(out, f"{out_prefix}{ours[0]}/kernel", reader.get(prefix + conv_key), conv_kernel)
        for a in BN_ARRAYS:
            _put(out, f"{out_prefix}{ours[1]}/{a}", reader.get(f"{prefix}{bn_key}.{a}"))

    if layout == "torchvision":
        conv_bn(("conv1", "bn1"), "conv1.weight", "bn1")
    else:
        conv_bn(
            ("conv1", "bn1"),
            "embedder.embedder.convolution.weight",
            "embedder.embedder.normalization",
        )
    for s, n_blocks in enumerate(blocks, start=1):
        for b in range(n_blocks):
            has_down = b == 0 and (s != 1 or kind == "bottleneck")
            blk = f"layer{s}_{b}/"
            for i in range(1, n_convs + 1):
                if layout == "torchvision":
                    src, bn = f"layer{s}.{b}.conv{i}.weight", f"layer{s}.{b}.bn{i}"
                else:
                    base = f"encoder.stages.{s - 1}.layers.{b}.layer.{i - 1}."
                    src, bn = base + "convolution.weight", base + "normalization"
                conv_bn((f"{blk}conv{i}", f"{blk}bn{i}"), src, bn)
            if has_down:
                if layout == "torchvision":
                    src, bn = f"layer{s}.{b}.downsample.0.weight", f"layer{s}.{b}.downsample.1"
                else:
                    base = f"encoder.stages.{s - 1}.layers.{b}.shortcut."
                    src, bn = base + "convolution.weight", base + "normalization"
                conv_bn((f"{blk}downsample_0", f"{blk}downsample_1"), src, bn)
    return out


def detect_layout(state_dict: dict[str, np.ndarray], prefix: str = "") -> str:
    """ "hf" when the HF ResNet stem key is present under `prefix`, else "torchvision"."""
    return "hf" if prefix + "embedder.embedder.convolution.weight" in state_dict else "torchvision"


def convert_resnet_backbone(
    state_dict: dict[str, np.ndarray], layout: str | None = None, prefix: str | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """A classification ResNet checkpoint (torchvision, or HF `ResNetModel` / `ResNetFor...`)
    -> (our flat `backbone/...` params, model fields {"backbone.name", "backbone.width"}).

    The classifier (`fc.*`, `classifier.*`) and `num_batches_tracked` are ignored; every other
    key must be used, and every expected key must be present.
    """
    if prefix is None:
        prefix = "resnet." if any(k.startswith("resnet.embedder") for k in state_dict) else ""
    layout = layout or detect_layout(state_dict, prefix)
    arch = infer_resnet(state_dict, prefix, layout)
    reader = KeyReader(state_dict)
    params = resnet_params(reader, prefix, layout, arch["depth"])
    reader.raise_if_bad(
        f"ResNet backbone ({layout} layout)",
        lambda k: k.endswith("num_batches_tracked") or k.startswith(("fc.", "classifier.")),
    )
    return params, {"backbone.name": f"resnet{arch['depth']}", "backbone.width": arch["width"]}
