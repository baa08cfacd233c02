"""Hugging Face DETR as the reference for parity tests (imports torch and transformers).

Builds `DetrForObjectDetection` offline with random weights and a native HF ResNet backbone, and
runs it returning every decoder layer's outputs the way the original DETR computes them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig  # noqa: E402

SMALL = dict(
    resnet=dict(
        embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2], layer_type="basic"
    ),
    d_model=32,
    encoder_layers=2,
    decoder_layers=3,
    heads=4,
    ffn=64,
    num_queries=12,
    num_labels=5,
)
R50 = dict(
    resnet=dict(
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=[3, 4, 6, 3],
        layer_type="bottleneck",
    ),
    d_model=256,
    encoder_layers=6,
    decoder_layers=6,
    heads=8,
    ffn=2048,
    num_queries=100,
    num_labels=91,
)


def build_hf_detr(
    spec: dict, seed: int = 0, position_embedding: str = "sine", **config_overrides
):
    """A random-weight HF DETR in eval mode, its FrozenBatchNorm statistics randomised.

    `config_overrides` go to `DetrConfig` (e.g. `attention_dropout=0.1` for training benchmarks).

    HF's FrozenBatchNorm copies the freshly initialised BatchNorm (identity: mean 0, var 1,
    weight 1, bias 0) until real weights load, which would leave BN untested; so every frozen
    BN gets random weight, bias, running mean and variance here.
    """
    torch.manual_seed(seed)
    rc = ResNetConfig(out_features=["stage4"], **spec["resnet"])
    kwargs = dict(
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
        position_embedding_type=position_embedding,
        auxiliary_loss=False,  # True feeds layer-normed states to the next layer (not DETR)
        attn_implementation="eager",
    )
    config = DetrConfig(**{**kwargs, **config_overrides})
    model = DetrForObjectDetection(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        randomise_frozen_bn(model, g)
        # Larger head weights so that logits and boxes spread out (a sharper test).
        model.class_labels_classifier.weight.mul_(4.0)
        model.bbox_predictor.layers[2].weight.mul_(8.0)
        model.bbox_predictor.layers[2].bias.copy_(torch.randn(4, generator=g))
    return model


def randomise_frozen_bn(model, g: torch.Generator) -> None:
    """Random weight, bias, running mean and variance for every (frozen) BatchNorm of an HF
    backbone, in place (HF's FrozenBatchNorm is the identity until real weights load)."""
    for name, buf in model.named_buffers():
        if ".normalization." not in name or name.endswith("num_batches_tracked"):
            continue
        n = buf.shape[0]
        with torch.no_grad():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            elif name.endswith("weight"):
                buf.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
            else:  # bias, running_mean
                buf.copy_(torch.randn(n, generator=g) * 0.2)


def random_targets(batch: int, num_labels: int, seed: int = 0):
    """Padded ground truth: 1-5 well-spread boxes per image. Returns labels int32 [B, 5], boxes
    float32 [B, 5, 4] normalised cxcywh, valid bool [B, 5]."""
    rng = np.random.default_rng(seed)
    g = 5
    labels = rng.integers(0, num_labels, (batch, g)).astype(np.int32)
    centre = rng.uniform(0.2, 0.8, (batch, g, 2))
    size = rng.uniform(0.05, 0.4, (batch, g, 2))
    boxes = np.concatenate([centre, size], -1).astype(np.float32)
    valid = np.arange(g)[None, :] < rng.integers(1, g + 1, (batch, 1))
    return labels, boxes, valid


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def random_batch(sizes, canvas, seed: int = 0):
    """Images of the given (h, w) sizes, zero-padded at the bottom/right into `canvas` (H, W).

    Returns images float32 [B, H, W, 3] (NHWC) and pixel_mask bool [B, H, W].
    """
    rng = np.random.default_rng(seed)
    b = len(sizes)
    images = np.zeros((b, *canvas, 3), np.float32)
    mask = np.zeros((b, *canvas), bool)
    for i, (h, w) in enumerate(sizes):
        images[i, :h, :w] = rng.normal(size=(h, w, 3))
        mask[i, :h, :w] = True
    return images, mask


def hf_forward_all_layers(model, images: np.ndarray, mask: np.ndarray):
    """Runs the HF model; returns logits [L, B, Q, C+1] and boxes [L, B, Q, 4] as numpy.

    Intermediate layers are `decoder.layernorm` of each decoder layer's output, as the original
    DETR's `return_intermediate` (HF's own auxiliary path re-feeds normed states; not used).
    """
    with torch.no_grad():
        out = model(
            pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            pixel_mask=torch.from_numpy(mask).long(),
            output_hidden_states=True,
        )
        hs = out.decoder_hidden_states  # (input, layer_0, ..., layer_{L-2}, final normed)
        inter = [model.model.decoder.layernorm(h) for h in hs[1:-1]] + [out.last_hidden_state]
        stack = torch.stack(inter)
        logits = model.class_labels_classifier(stack)
        boxes = model.bbox_predictor(stack).sigmoid()
    return logits, boxes


def hf_loss(model, logits, boxes, labels, gt_boxes, valid):
    """HF's DETR loss (with auxiliary terms) on given outputs [L, B, Q, *] and padded targets."""
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    targets = [
        {
            "class_labels": torch.from_numpy(labels[i][valid[i]]).long(),
            "boxes": torch.from_numpy(gt_boxes[i][valid[i]]).float(),
        }
        for i in range(labels.shape[0])
    ]
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.auxiliary_loss = True
    with torch.no_grad():
        loss, loss_dict, _ = ForObjectDetectionLoss(
            logits[-1], targets, "cpu", boxes[-1], config, logits, boxes
        )
    return float(loss), {k: float(v) for k, v in loss_dict.items()}


def make_dc5(model) -> None:
    """Turns the HF native ResNet's last stage into torchvision's DC5 in place (HF's ResNet has
    no dilation option): stride 1 everywhere in stage 4; its first block keeps dilation 1, the
    other blocks' 3x3 convolutions get dilation 2 and padding 2 (torchvision `_make_layer` with
    `replace_stride_with_dilation=[False, False, True]`, as DETR's `--dilation`)."""
    stage = model.model.backbone.model.encoder.stages[3]
    for b, block in enumerate(stage.layers):
        for module in block.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.stride = (1, 1)
                if b > 0 and module.kernel_size == (3, 3):
                    module.dilation, module.padding = (2, 2), (2, 2)
