"""Hugging Face Mask2Former as the reference for parity tests (imports torch, transformers).

Builds `Mask2FormerForUniversalSegmentation` offline with random weights and a native HF ResNet
(C2-C5), and returns every prediction's class and mask logits and the pixel decoder's outputs.

HF's initialisation leaves a weak test: BatchNorm weights N(0, 0.02) (the backbone's activations
collapse onto the BN biases) and convolutions N(0, 0.02) (near-zero mask features, so every mask
logit sits at the sigmoid's 0.5 threshold). So the backbone's convolutions get He-normal weights
and its BatchNorms random affine maps and statistics, the deformable sampling random offsets and
weights, and the mask projection and class head larger weights: the masks then block part of
each level, and the comparison checks the masked attention rather than its all-open fallback.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    ResNetConfig,
)
from transformers.utils import logging as hf_logging  # noqa: E402

SMALL = dict(
    resnet=dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2],
                layer_type="basic"),
    hidden=64, mask_dim=48, encoder_layers=2, encoder_ffn=64, heads=4, ffn=96,
    decoder_layers=3,  # ours: masked-attention layers; HF counts one more (the first prediction)
    num_queries=20, num_labels=5,
)


def build_hf_mask2former(spec: dict, seed: int = 0):
    """A random-weight HF Mask2Former with a ResNet backbone, in eval mode (see the module
    docstring for how its weights are spread)."""
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "resnet is not a supported backbone" (it works)
    config = Mask2FormerConfig(
        backbone_config=ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"],
                                     **spec["resnet"]),
        use_pretrained_backbone=False, feature_size=spec["hidden"], hidden_dim=spec["hidden"],
        mask_feature_size=spec["mask_dim"], encoder_layers=spec["encoder_layers"],
        encoder_feedforward_dim=spec["encoder_ffn"], num_attention_heads=spec["heads"],
        dim_feedforward=spec["ffn"], decoder_layers=spec["decoder_layers"] + 1,
        num_queries=spec["num_queries"], num_labels=spec["num_labels"], dropout=0.0,
    )
    model = Mask2FormerForUniversalSegmentation(config).eval()
    hf_logging.set_verbosity(verbosity)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        _spread(model, g)
    return model


def _spread(model, g: torch.Generator) -> None:
    backbone = model.model.pixel_level_module.encoder
    for module in backbone.modules():
        if isinstance(module, torch.nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            module.weight.copy_(torch.randn(module.weight.shape, generator=g)
                                * (2.0 / fan_out) ** 0.5)
        elif isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
            module.bias.copy_(torch.randn(n, generator=g) * 0.2)
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
    for name, p in model.named_parameters():
        if name.endswith(("sampling_offsets.weight", "attention_weights.weight")):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    decoder = model.model.pixel_level_module.decoder
    decoder.mask_projection.weight.mul_(20.0)
    decoder.mask_projection.bias.copy_(torch.randn(decoder.mask_projection.bias.shape,
                                                   generator=g) * 0.1)
    model.class_predictor.weight.mul_(3.0)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def hf_forward(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """HF's outputs for NHWC images (HF Mask2Former has no padding mask: it reads the whole
    canvas): `logits` [L + 1, B, Q, C + 1] and `masks` [L + 1, B, Q, h, w] (every prediction,
    the first made before the first decoder layer), `mask_features` [B, h, w, M] (NHWC) and
    `encoder` [B, N, D] (the pixel decoder's three refined levels, coarsest first, flattened)."""
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                    output_auxiliary_logits=True, output_hidden_states=True)
        aux = out.auxiliary_logits
        logits = [a["class_queries_logits"] for a in aux] + [out.class_queries_logits]
        masks = [a["masks_queries_logits"] for a in aux] + [out.masks_queries_logits]
        levels = [x.flatten(2).transpose(1, 2) for x in out.pixel_decoder_hidden_states]
        return {"logits": torch.stack(logits).numpy(), "masks": torch.stack(masks).numpy(),
                "mask_features": out.pixel_decoder_last_hidden_state.permute(0, 2, 3, 1).numpy(),
                "encoder": torch.cat(levels, 1).numpy(),
                "shapes": [tuple(x.shape[-2:]) for x in out.pixel_decoder_hidden_states]}


def blocked_fraction(masks: np.ndarray, shapes) -> float:
    """The share of (query, position) pairs HF's masked attention blocks, over the masks that
    restrict a layer (all predictions but the last) at the level each one is resized to."""
    fractions = []
    t = torch.from_numpy(masks)
    for i in range(len(masks) - 1):
        size = shapes[i % len(shapes)]
        m = torch.nn.functional.interpolate(t[i], size=size, mode="bilinear",
                                            align_corners=False).sigmoid() < 0.5
        m = m.flatten(2)
        full = m.all(-1, keepdim=True)
        fractions.append(float((m & ~full).float().mean()))
    return float(np.mean(fractions))
