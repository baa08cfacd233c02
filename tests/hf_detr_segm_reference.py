"""Hugging Face `DetrForSegmentation` as the reference for the DETR mask head's parity tests
(imports torch and transformers; offline, random weights, native HF ResNet backbone)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hf_reference as ref  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import DetrConfig, DetrForSegmentation, ResNetConfig  # noqa: E402

# hf_reference.SMALL with 8 heads: the mask head's first GroupNorm(8) needs D + heads = 40.
SMALL_SEGM = dict(ref.SMALL, heads=8)


def build_hf_detr_segm(spec: dict, seed: int = 0):
    """A random-weight HF DetrForSegmentation in eval mode, made a sharp test.

    FrozenBatchNorm statistics are randomised (HF's are the identity until weights load); the
    class and box heads are spread as in hf_reference.build_hf_detr, the queries drawn from
    N(0, 1) and the transformer's linear weights xavier-uniform (as the original initialises
    them); the mask head's GroupNorm
    affines and conv biases (HF: 1, 0 and 0) are randomised, and the attention maps sharpened
    (q_proj x 16) and weighted up in the first conv (x 100), so that the per-query part of the
    masks, which only the attention maps carry, is far from negligible.
    """
    torch.manual_seed(seed)
    rc = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"], **spec["resnet"])
    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=rc,
        d_model=spec["d_model"],
        encoder_layers=spec["encoder_layers"],
        decoder_layers=spec["decoder_layers"],
        encoder_attention_heads=spec["heads"],
        decoder_attention_heads=spec["heads"],
        encoder_ffn_dim=spec["ffn"],
        decoder_ffn_dim=spec["ffn"],
        num_queries=spec["num_queries"],
        num_labels=spec["num_labels"],
        auxiliary_loss=False,
        attn_implementation="eager",
    )
    model = DetrForSegmentation(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    d = spec["d_model"]
    with torch.no_grad():
        ref.randomise_frozen_bn(model, g)
        # N(0, 1) queries (the original's nn.Embedding init; HF's std 0.02 makes every query's
        # decoder output, and so its attention map, nearly the same).
        queries = model.detr.model.query_position_embeddings.weight
        queries.copy_(torch.randn(queries.shape, generator=g))
        # Xavier-uniform transformer weights (the original's init; HF's N(0, 0.02) gives nearly
        # uniform cross-attention, the same for every query).
        for part in (model.detr.model.encoder, model.detr.model.decoder):
            for module in part.modules():
                if isinstance(module, torch.nn.Linear):
                    torch.nn.init.xavier_uniform_(module.weight, generator=g)
        model.detr.class_labels_classifier.weight.mul_(4.0)
        model.detr.bbox_predictor.layers[2].weight.mul_(8.0)
        model.detr.bbox_predictor.layers[2].bias.copy_(torch.randn(4, generator=g))
        model.bbox_attention.q_proj.weight.mul_(16.0)
        model.mask_head.conv1.conv.weight[:, d:].mul_(100.0)
        for module in model.mask_head.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.3)
            elif isinstance(module, torch.nn.Conv2d):
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        for lin in (model.bbox_attention.q_proj, model.bbox_attention.k_proj):
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
    return model


def hf_segm_forward(model, images: np.ndarray, mask: np.ndarray):
    """Runs the HF model on NHWC images and a bool pixel mask. Returns numpy logits
    [L, B, Q, C + 1] and boxes [L, B, Q, 4] of every decoder layer (each through the decoder's
    final layernorm, as the original's intermediate outputs) and pred_masks [B, Q, H4, W4]."""
    with torch.no_grad():
        out = model(
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            pixel_mask=torch.from_numpy(mask).long(),
            output_hidden_states=True,
        )
        detr = model.detr
        hs = out.decoder_hidden_states  # (input, layer_0, ..., layer_{L-2}, final normed)
        inter = [detr.model.decoder.layernorm(h) for h in hs[1:-1]] + [out.last_hidden_state]
        stack = torch.stack(inter)
        logits = detr.class_labels_classifier(stack)
        boxes = detr.bbox_predictor(stack).sigmoid()
        # The model's own last-layer outputs agree with the re-derived ones.
        assert torch.allclose(logits[-1], out.logits) and torch.allclose(boxes[-1], out.pred_boxes)
    return logits.numpy(), boxes.numpy(), out.pred_masks.numpy()


_V5_TO_ORIGINAL = {  # written from the original's MaskHeadSmallConv / MHAttentionMap names
    "bbox_attention.q_proj.": "bbox_attention.q_linear.",
    "bbox_attention.k_proj.": "bbox_attention.k_linear.",
    "mask_head.conv1.conv.": "mask_head.lay1.", "mask_head.conv1.norm.": "mask_head.gn1.",
    "mask_head.conv2.conv.": "mask_head.lay2.", "mask_head.conv2.norm.": "mask_head.gn2.",
    "mask_head.output_conv.": "mask_head.out_lay.",
    **{f"mask_head.fpn_stages.{i}.fpn_adapter.": f"mask_head.adapter{i + 1}." for i in range(3)},
    **{f"mask_head.fpn_stages.{i}.refine.conv.": f"mask_head.lay{i + 3}." for i in range(3)},
    **{f"mask_head.fpn_stages.{i}.refine.norm.": f"mask_head.gn{i + 3}." for i in range(3)},
}


def original_mask_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An HF 5.x DetrForSegmentation state_dict with the original's (and transformers 4.x's)
    mask-head names; the `detr.` keys are left as they are."""
    out = {}
    for k, v in state_dict.items():
        for new, old in _V5_TO_ORIGINAL.items():
            if k.startswith(new):
                k = old + k[len(new):]
                break
        out[k] = v
    return out
