"""Shared pieces of the mask loss / mask cost tests: a small random problem in our batch layout
and HF transformers' mask losses (Mask2Former, DETR segm) run on it, torch's random draws
replaced by given arrays so that both sides sample the same points."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

NUM_CLASSES = 4


def blob_masks(rng: np.random.Generator, n: int, big_h: int, big_w: int) -> np.ndarray:
    """uint8 [n, H, W] random axis-aligned rectangles (0/1), each at least 3x3."""
    out = np.zeros((n, big_h, big_w), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, big_h - 3), rng.integers(0, big_w - 3)
        y1, x1 = rng.integers(y0 + 3, big_h + 1), rng.integers(x0 + 3, big_w + 1)
        out[i, y0:y1, x0:x1] = 1
    return out


def make_problem(seed: int = 0, num_layers: int = 2, mask_layers: int | None = None,
                 num_valid=(2, 3), num_q: int = 5, num_g: int = 3, hw=(6, 8),
                 canvas=None) -> tuple[dict, dict]:
    """(outputs, batch) as numpy: `pred_logits` [L, B, Q, C+1], `pred_boxes` [L, B, Q, 4]
    cxcywh, `pred_masks` [L_m, B, Q, h, w] (spread logits, std 3); batch `labels`, `boxes`,
    `box_valid` (the first `num_valid[b]` slots), `masks` uint8 [B, G, 4h, 4w] (zeros at
    invalid slots)."""
    rng = np.random.default_rng(seed)
    bsz = len(num_valid)
    h, w = hw
    big_h, big_w = canvas or (4 * h, 4 * w)
    mask_layers = num_layers if mask_layers is None else mask_layers
    valid = np.zeros((bsz, num_g), bool)
    masks = np.zeros((bsz, num_g, big_h, big_w), np.uint8)
    for b, n in enumerate(num_valid):
        valid[b, :n] = True
        masks[b, :n] = blob_masks(rng, n, big_h, big_w)
    centre = rng.uniform(0.2, 0.8, size=(num_layers, bsz, num_q, 2))
    size = rng.uniform(0.1, 0.4, size=(num_layers, bsz, num_q, 2))
    gt_boxes = np.concatenate([rng.uniform(0.2, 0.8, (bsz, num_g, 2)),
                               rng.uniform(0.1, 0.4, (bsz, num_g, 2))], -1)
    outputs = {
        "pred_logits": rng.normal(size=(num_layers, bsz, num_q, NUM_CLASSES + 1)),
        "pred_boxes": np.concatenate([centre, size], -1),
        "pred_masks": 3.0 * rng.normal(size=(mask_layers, bsz, num_q, h, w)),
    }
    batch = {
        "labels": np.where(valid, rng.integers(0, NUM_CLASSES, (bsz, num_g)), 0),
        "boxes": np.where(valid[..., None], gt_boxes, 0.0),
        "box_valid": valid,
        "masks": masks,
    }
    outputs = {k: v.astype(np.float32) for k, v in outputs.items()}
    batch["labels"] = batch["labels"].astype(np.int32)
    batch["boxes"] = batch["boxes"].astype(np.float32)
    return outputs, batch


@contextlib.contextmanager
def torch_rand_from(monkeypatch, draws: list[np.ndarray]):
    """torch.rand returns `draws` in order (shapes checked); all must be used."""
    queue = [torch.from_numpy(np.array(d, np.float32)) for d in draws]

    def fake_rand(*shape, **kwargs):
        assert queue, f"unexpected torch.rand{shape}"
        out = queue.pop(0)
        assert tuple(out.shape) == tuple(shape), (out.shape, shape)
        return out

    with monkeypatch.context() as m:
        m.setattr(torch, "rand", fake_rand)
        yield
    assert not queue, f"{len(queue)} draws left unused"


def hf_indices(match: np.ndarray, valid: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Our match [B, G] as HF's per-image (query indices, target indices), targets ascending."""
    out = []
    for b in range(match.shape[0]):
        tgt = np.flatnonzero(valid[b])
        out.append((torch.as_tensor(match[b, tgt], dtype=torch.int64),
                    torch.as_tensor(tgt, dtype=torch.int64)))
    return out


def mask_labels(batch: dict) -> list[torch.Tensor]:
    """HF's per-image target masks [n_b, H, W] float (the valid slots)."""
    return [torch.from_numpy(batch["masks"][b][batch["box_valid"][b]].astype(np.float32))
            for b in range(len(batch["masks"]))]
