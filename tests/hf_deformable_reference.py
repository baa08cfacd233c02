"""Hugging Face Deformable DETR as the reference for parity tests (imports torch, transformers).

Builds `DeformableDetrForObjectDetection` offline with random weights, a native HF ResNet with
C3-C5 outputs and non-trivial frozen-BN statistics, and returns every decoder layer's logits and
boxes the way HF's own forward computes them (its heads on `intermediate_hidden_states` around
`init_reference_points` / `intermediate_reference_points`).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hf_reference import randomise_frozen_bn  # noqa: E402
from transformers import (  # noqa: E402
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    ResNetConfig,
)
from transformers.models.deformable_detr.modeling_deformable_detr import (  # noqa: E402
    inverse_sigmoid,
)

SMALL = dict(
    resnet=dict(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2],
                layer_type="basic"),
    d_model=64, encoder_layers=2, decoder_layers=3, heads=4, ffn=64, enc_points=3, dec_points=2,
    num_queries=12, num_labels=5,
)


def build_hf_deformable(spec: dict, refine: bool, two_stage: bool, seed: int = 0):
    """A random-weight HF Deformable DETR in eval mode (see the module docstring).

    Besides the BN statistics, the heads are spread (larger class weights, random box biases)
    and the sampling offsets / attention weights get random kernels, so that every query samples
    its own points and the comparison checks the sampling rather than the initial pattern.
    """
    torch.manual_seed(seed)
    config = DeformableDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_config=ResNetConfig(out_features=["stage2", "stage3", "stage4"],
                                     **spec["resnet"]),
        d_model=spec["d_model"], encoder_layers=spec["encoder_layers"],
        decoder_layers=spec["decoder_layers"], encoder_attention_heads=spec["heads"],
        decoder_attention_heads=spec["heads"], encoder_ffn_dim=spec["ffn"],
        decoder_ffn_dim=spec["ffn"], encoder_n_points=spec["enc_points"],
        decoder_n_points=spec["dec_points"], num_queries=spec["num_queries"],
        two_stage_num_proposals=spec["num_queries"], num_labels=spec["num_labels"],
        with_box_refine=refine, two_stage=two_stage, auxiliary_loss=True,
        class_cost=2, bbox_cost=5, giou_cost=2,  # Deformable DETR's costs (HF's default 1/5/2)
    )
    model = DeformableDetrForObjectDetection(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        randomise_frozen_bn(model, g)
        for name, p in model.named_parameters():
            if name.endswith(("sampling_offsets.weight", "attention_weights.weight")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        _spread_heads(model, refine, g)
    return model


def _spread_heads(model, refine: bool, g: torch.Generator) -> None:
    """New head weights written into every copy HF keeps (its heads, and the decoder's
    references to them), identical across layers unless refining."""
    count = len(model.class_embed)
    shared = None
    for i in range(count):
        cls, box = model.class_embed[i], model.bbox_embed[i]
        if shared is None or refine:
            shared = (torch.randn(cls.weight.shape, generator=g) * 0.5,
                      torch.randn(cls.bias.shape, generator=g),
                      torch.randn(box.layers[2].weight.shape, generator=g) * 0.3,
                      torch.randn(box.layers[2].bias.shape, generator=g) * 0.5)
        copies = [(cls, box)]
        dec = model.model.decoder
        if dec.class_embed is not None:
            copies.append((dec.class_embed[i], None))
        if dec.bbox_embed is not None:
            copies.append((None, dec.bbox_embed[i]))
        for c, b in copies:
            if c is not None:
                c.weight.copy_(shared[0])
                c.bias.copy_(shared[1])
            if b is not None:
                b.layers[2].weight.copy_(shared[2])
                b.layers[2].bias.copy_(shared[3])
                b.layers[0].load_state_dict(box.layers[0].state_dict())
                b.layers[1].load_state_dict(box.layers[1].state_dict())


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def hf_forward(model, images: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """HF's outputs for NHWC images and a bool mask: `logits` [L, B, Q, C], `boxes`
    [L, B, Q, 4], `encoder` [B, N, D] and, two-stage, `enc_logits` [B, N, C] and `enc_boxes`
    [B, N, 4] (the sigmoid of HF's proposal coordinates)."""
    with torch.no_grad():
        out = model.model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                          pixel_mask=torch.from_numpy(mask).long())
        hs, init_ref = out.intermediate_hidden_states, out.init_reference_points
        inter = out.intermediate_reference_points
        logits, boxes = [], []
        for lvl in range(hs.shape[1]):
            ref = inverse_sigmoid(init_ref if lvl == 0 else inter[:, lvl - 1])
            delta = model.bbox_embed[lvl](hs[:, lvl])
            if ref.shape[-1] == 4:
                delta = delta + ref
            else:
                delta = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
            logits.append(model.class_embed[lvl](hs[:, lvl]))
            boxes.append(delta.sigmoid())
        result = {"logits": torch.stack(logits).numpy(), "boxes": torch.stack(boxes).numpy(),
                  "encoder": out.encoder_last_hidden_state.numpy()}
        if out.enc_outputs_class is not None:
            result["enc_logits"] = out.enc_outputs_class.numpy()
            result["enc_boxes"] = out.enc_outputs_coord_logits.sigmoid().numpy()
    return result


def hf_deformable_loss(model, logits, boxes, labels, gt_boxes, valid, enc=None):
    """HF's Deformable DETR criterion (focal class + L1 + GIoU, all layers) on given outputs
    [L, B, Q, *] and padded targets, per term; with `enc` = (enc_logits, enc_boxes) also the
    same criterion on the proposals against class-agnostic targets (labels 0, as the original
    two-stage loss; HF's own loss leaves the proposals out), as `<term>_enc`."""
    from transformers.loss.loss_deformable_detr import (
        DeformableDetrHungarianMatcher,
        DeformableDetrImageLoss,
    )

    c = model.config
    matcher = DeformableDetrHungarianMatcher(class_cost=c.class_cost, bbox_cost=c.bbox_cost,
                                             giou_cost=c.giou_cost)
    crit = DeformableDetrImageLoss(matcher, c.num_labels, c.focal_alpha,
                                   ["labels", "boxes", "cardinality"])

    def targets(zero_labels):
        scale = 0 if zero_labels else 1
        return [{"class_labels": torch.from_numpy(labels[i][valid[i]]).long() * scale,
                 "boxes": torch.from_numpy(gt_boxes[i][valid[i]]).float()}
                for i in range(labels.shape[0])]

    logits_t, boxes_t = torch.from_numpy(np.asarray(logits)), torch.from_numpy(np.asarray(boxes))
    outputs = {"logits": logits_t[-1], "pred_boxes": boxes_t[-1],
               "auxiliary_outputs": [{"logits": a, "pred_boxes": b}
                                     for a, b in zip(logits_t[:-1], boxes_t[:-1], strict=True)]}
    with torch.no_grad():
        terms = {k: float(v) for k, v in crit(outputs, targets(False)).items()}
        if enc is not None:
            enc_out = {"logits": torch.from_numpy(np.asarray(enc[0])),
                       "pred_boxes": torch.from_numpy(np.asarray(enc[1]))}
            enc_terms = crit(enc_out, targets(True))
            terms.update({f"{k}_enc": float(v) for k, v in enc_terms.items()})
    return terms
