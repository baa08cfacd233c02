"""Hugging Face MaskFormer as the reference for parity tests (imports torch and transformers).

Builds `MaskFormerForInstanceSegmentation` offline with random weights, an HF ResNet backbone
(MaskFormerConfig accepts `resnet` and `swin` backbones) and a DETR decoder config, and runs
it returning every decoder layer's class and mask logits the way the original MaskFormer
computes them (each layer's output through the decoder's final LayerNorm).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    DetrConfig,
    MaskFormerConfig,
    MaskFormerForInstanceSegmentation,
    ResNetConfig,
)

# ResNet-18 of stem width 16: C5 has 128 channels != d_model 64 (HF has an input projection).
SMALL = dict(
    resnet=dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2],
                layer_type="basic"),
    d_model=64, decoder_layers=3, heads=4, ffn=128, num_queries=20, num_labels=5,
    fpn_feature_size=64, mask_feature_size=64,
)
# C5 has d_model channels: HF reads it without an input projection (ours: input_proj=False).
NO_PROJECTION = dict(SMALL, resnet=dict(SMALL["resnet"], embedding_size=8,
                                        hidden_sizes=[8, 16, 32, 64]))


def build_hf_maskformer(spec: dict, seed: int = 0):
    """A random-weight HF MaskFormer in eval mode, with spread-out weights.

    HF's init leaves BatchNorm weights ~N(0, 0.02) with identity statistics, LayerNorm and
    GroupNorm at identity and the query embeddings ~N(0, 0.02) (near-identical queries): every
    norm gets random affine parameters (BatchNorm also random running statistics), the queries
    N(0, 1), the decoder's and heads' linear layers xavier weights and random biases, and the
    class head 4x weights, so that the outputs vary between queries, layers and pixels.
    """
    torch.manual_seed(seed)
    rc = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"], **spec["resnet"])
    dc = DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=ResNetConfig(),
        d_model=spec["d_model"], encoder_layers=0, decoder_layers=spec["decoder_layers"],
        decoder_attention_heads=spec["heads"], encoder_attention_heads=spec["heads"],
        decoder_ffn_dim=spec["ffn"], num_queries=spec["num_queries"], dropout=0.0,
        auxiliary_loss=False,  # True re-feeds normed states to the next layer (not MaskFormer)
    )
    config = MaskFormerConfig(
        backbone_config=rc, decoder_config=dc, num_labels=spec["num_labels"],
        fpn_feature_size=spec["fpn_feature_size"], mask_feature_size=spec["mask_feature_size"],
        use_auxiliary_loss=False,
    )
    config._attn_implementation = "eager"
    model = MaskFormerForInstanceSegmentation(config).eval()
    g = torch.Generator().manual_seed(seed + 1)

    def uniform(n, lo, hi):
        return torch.rand(n, generator=g) * (hi - lo) + lo

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.GroupNorm | torch.nn.LayerNorm):
                n = module.weight.shape[0]
                module.weight.copy_(uniform(n, 0.6, 1.4))
                module.bias.copy_(torch.randn(n, generator=g) * 0.2)
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                    module.running_var.copy_(uniform(n, 0.5, 2.0))
        heads = (model.model.transformer_module, model.class_predictor, model.mask_embedder)
        for part in heads:
            for module in part.modules():
                if isinstance(module, torch.nn.Linear):
                    torch.nn.init.xavier_uniform_(module.weight, generator=g)
                    module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
        model.model.transformer_module.queries_embedder.weight.normal_(generator=g)
        model.class_predictor.weight.mul_(4.0)
    return model


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _per_layer(model, hs, last, pixels) -> dict[str, np.ndarray]:
    """Class and mask logits of every decoder layer: layer i's output through the decoder's
    LayerNorm (as the original MaskFormer's intermediate outputs; HF's own
    `use_auxiliary_loss` path stacks the un-normed states and the zero input instead)."""
    norm = model.model.transformer_module.decoder.layernorm
    stack = torch.stack([norm(h) for h in hs[1:-1]] + [last])  # hs: (input, layer_0, ..)
    masks = torch.einsum("lbqc,bchw->lbqhw", model.mask_embedder(stack), pixels)
    return {"logits": model.class_predictor(stack).numpy(), "masks": masks.numpy(),
            "mask_features": pixels.permute(0, 2, 3, 1).numpy()}


def hf_forward_all_layers(model, images: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Runs the HF model on NHWC images; returns numpy arrays: `logits` [L, B, Q, C+1] and
    `masks` [L, B, Q, h, w] per decoder layer (see `_per_layer`), `mask_features` [B, h, w, E]
    (the pixel decoder's output, NHWC) and HF's own final `class_queries_logits` /
    `masks_queries_logits`.
    """
    with torch.no_grad():
        out = model(
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            pixel_mask=torch.from_numpy(mask).long(),
            output_hidden_states=True,
        )
        result = _per_layer(model, out.transformer_decoder_hidden_states,
                            out.transformer_decoder_last_hidden_state,
                            out.pixel_decoder_last_hidden_state)
    result["class_queries_logits"] = out.class_queries_logits.numpy()
    result["masks_queries_logits"] = out.masks_queries_logits.numpy()
    return result


def build_pixel_encoder(spec: dict, layers: int, seed: int = 0):
    """(HF DetrEncoder of `layers` layers at the FPN width, a 1x1 Conv2d from C5 to it), random
    (LayerNorms not at identity): the parts of the original's `TransformerEncoderPixelDecoder`
    that HF's MaskFormer lacks."""
    from transformers.models.detr.modeling_detr import DetrEncoder

    torch.manual_seed(seed + 7)
    d = spec["fpn_feature_size"]
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False,
                        backbone_config=ResNetConfig(), d_model=d, encoder_layers=layers,
                        encoder_attention_heads=spec["heads"], encoder_ffn_dim=spec["ffn"],
                        dropout=0.0)
    config._attn_implementation = "eager"
    encoder = DetrEncoder(config).eval()
    proj = torch.nn.Conv2d(spec["resnet"]["hidden_sizes"][-1], d, kernel_size=1)
    g = torch.Generator().manual_seed(seed + 8)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight, generator=g)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(torch.rand(d, generator=g) * 0.8 + 0.6)
                module.bias.copy_(torch.randn(d, generator=g) * 0.2)
    return encoder, proj


def hf_forward_with_pixel_encoder(model, encoder, proj, images: np.ndarray) -> dict:
    """The original's `TransformerEncoderPixelDecoder` composed from HF modules: C5 -> `proj`
    -> encoder (sine positions over the whole canvas, no mask) -> the FPN's stem and layers ->
    `mask_projection`; HF's transformer module reads the encoded map (no input projection:
    C5 must have d_model channels, so that HF built none). Same outputs as
    `hf_forward_all_layers` (without HF's own final logits)."""
    assert model.model.transformer_module.input_projection is None
    with torch.no_grad():
        pixel_values = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        feats = model.model.pixel_level_module.encoder(pixel_values).feature_maps  # C2..C5
        x = proj(feats[-1])
        b, c, h, w = x.shape
        module = model.model.transformer_module
        pos = module.position_embedder(x.shape, x.device, x.dtype).flatten(2).transpose(1, 2)
        tokens = encoder(inputs_embeds=x.flatten(2).transpose(1, 2), attention_mask=None,
                         spatial_position_embeddings=pos).last_hidden_state
        encoded = tokens.transpose(1, 2).reshape(b, c, h, w)
        decoder = model.model.pixel_level_module.decoder
        y = decoder.fpn.stem(encoded)
        for layer, left in zip(decoder.fpn.layers, feats[:-1][::-1], strict=True):
            y = layer(y, left)
        pixels = decoder.mask_projection(y)
        out = module(encoded, output_hidden_states=True)
        return _per_layer(model, out.hidden_states, out.last_hidden_state, pixels)
