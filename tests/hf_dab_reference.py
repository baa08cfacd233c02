"""Hugging Face DAB-DETR as the reference for parity tests (imports torch and transformers).

Builds `DabDetrForObjectDetection` offline with random weights and a native HF ResNet backbone
(`backbone_config=ResNetConfig(out_features=["stage4"])`; without a backbone config DabDetrConfig
builds a timm one), and returns every decoder layer's internals: the normed hidden states, the
anchors each layer started from, the last layer's refinement, and per-layer logits and boxes
computed with HF's own heads the way its forward computes the last layer's.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hf_reference import randomise_frozen_bn  # noqa: E402
from transformers import DabDetrConfig, DabDetrForObjectDetection, ResNetConfig  # noqa: E402
from transformers.models.dab_detr.modeling_dab_detr import inverse_sigmoid  # noqa: E402

SMALL = dict(
    resnet=dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2],
                layer_type="basic"),
    d_model=32, encoder_layers=2, decoder_layers=2, heads=4, ffn=64, num_queries=8,
    num_labels=5,
)


def build_hf_dab(spec: dict, seed: int = 0, **config_overrides):
    """A random-weight HF DAB-DETR in eval mode with every part made to matter.

    HF initialises the anchors N(0, 0.02) (all boxes ~0.5), the box head's last layer to zero
    and FrozenBN to the identity, which would leave the anchors, the refinement and BN
    untested; so the anchors get N(0, 1) logits (the original's nn.Embedding init), the heads
    random weights (written through the tied box head, so the decoder's refinement sees them
    too), the PReLU slopes random values and the frozen BNs random statistics.
    """
    torch.manual_seed(seed)
    kwargs = dict(
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(out_features=["stage4"], **spec["resnet"]),
        hidden_size=spec["d_model"], encoder_layers=spec["encoder_layers"],
        decoder_layers=spec["decoder_layers"], encoder_attention_heads=spec["heads"],
        decoder_attention_heads=spec["heads"], encoder_ffn_dim=spec["ffn"],
        decoder_ffn_dim=spec["ffn"], num_queries=spec["num_queries"],
        num_labels=spec["num_labels"], auxiliary_loss=True,
    )
    model = DabDetrForObjectDetection(DabDetrConfig(**{**kwargs, **config_overrides})).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        randomise_frozen_bn(model, g)
        anchors = model.model.query_refpoint_embeddings.weight
        anchors.copy_(torch.randn(anchors.shape, generator=g))
        if model.model.num_patterns:
            patterns = model.model.patterns.weight
            patterns.copy_(torch.randn(patterns.shape, generator=g))
        model.class_embed.weight.copy_(torch.randn(model.class_embed.weight.shape, generator=g))
        model.class_embed.bias.copy_(torch.randn(model.class_embed.bias.shape, generator=g))
        last = model.bbox_predictor.layers[2]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.3)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.5)
        for name, p in model.named_parameters():
            if name.endswith("activation_fn.weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
    # One box head: the decoder's refinement and the predictions use the same weights.
    assert model.model.decoder.bbox_embed.layers[2].weight is last.weight
    return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def hf_forward(model, images: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """HF's internals and outputs for NHWC images and a bool mask (True = real):
    `encoder` [B, N, D], `hs` [L, B, Q, D] (normed), `references` [L + 1, B, Q, 4] (each
    layer's starting anchors, then the last layer's refinement), `logits` [L, B, Q, C] and
    `boxes` [L, B, Q, 4] per layer, and `final_logits` / `final_boxes` from HF's own forward."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    pixel_mask = torch.from_numpy(mask).long()
    last_out = {}
    hook = model.model.decoder.layers[-1].register_forward_hook(
        lambda mod, args, out: last_out.update(h=out[0]))
    try:
        with torch.no_grad():
            out = model.model(pixel_values=pixels, pixel_mask=pixel_mask,
                              output_hidden_states=True)
            final = model(pixel_values=pixels, pixel_mask=pixel_mask)
            hs, refs = out.intermediate_hidden_states, out.reference_points  # [L, B, Q, *]
            dec = model.model.decoder
            last_ref = (dec.bbox_embed(last_out["h"]) + inverse_sigmoid(refs[-1])).sigmoid()
            logits = model.class_embed(hs)
            boxes = (model.bbox_predictor(hs) + inverse_sigmoid(refs)).sigmoid()
    finally:
        hook.remove()
    return {"encoder": out.encoder_last_hidden_state.numpy(), "hs": hs.numpy(),
            "references": torch.cat([refs, last_ref[None]]).numpy(),
            "logits": logits.numpy(), "boxes": boxes.numpy(),
            "final_logits": final.logits.numpy(), "final_boxes": final.pred_boxes.numpy()}
