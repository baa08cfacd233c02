"""The mask loss terms (detr_jax/losses/masks.py) against HF transformers: `masks` vs
Mask2FormerLoss.loss_masks on the same sampled points, `masks_full` vs DETR's ImageLoss.loss_masks
(sigmoid_focal_loss, dice_loss); hand-worked dice / focal on 4x4 masks; zero-object images;
gradients (finite, and equal to torch's autograd)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from hf_mask_reference import NUM_CLASSES, hf_indices, make_problem, mask_labels, torch_rand_from  # noqa: E402
from transformers import Mask2FormerConfig  # noqa: E402
from transformers.loss.loss_for_object_detection import ImageLoss  # noqa: E402
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss  # noqa: E402

from detr_jax.losses import LOSS_TERMS, Criterion  # noqa: E402
from detr_jax.losses.masks import dice_loss, loss_rng, upsample_masks  # noqa: E402
from detr_jax.matching import HungarianScipyMatcher  # noqa: E402
from detr_jax.ops.point_sample import random_candidates  # noqa: E402

POINTS = dict(num_points=50, oversample_ratio=3.0, importance_sample_ratio=0.75)
WEIGHTS = {"loss_mask": 5.0, "loss_dice": 2.0}


def criterion(term: str, settings: dict, aux_loss: bool = True, costs=None) -> Criterion:
    return Criterion({term: settings}, WEIGHTS, LOSS_TERMS, HungarianScipyMatcher(),
                     costs or {"class": 1.0, "bbox": 5.0}, aux_loss, num_classes=NUM_CLASSES)


@functools.cache
def jitted(term: str, items: tuple, aux_loss: bool = True):
    c = criterion(term, dict(items), aux_loss)
    return jax.jit(lambda o, b, match: c(o, b, match=match))


def random_match(rng, num_layers, num_q, valid):
    """[L, B, G] distinct queries for the valid slots, -1 elsewhere."""
    out = np.full((num_layers,) + valid.shape, -1, np.int32)
    for layer in range(num_layers):
        for b in range(valid.shape[0]):
            q = rng.permutation(num_q)[: valid[b].sum()]
            out[layer, b, valid[b]] = q
    return out


def hf_mask2former(pred, batch, match, key, monkeypatch, grad=False):
    """HF's loss_masks of one layer (pred [B, Q, h, w]) with its point draws set to ours."""
    valid = batch["box_valid"]
    cand, fill = random_candidates(key, valid.size, **POINTS)
    rows = np.flatnonzero(valid.reshape(-1))
    config = Mask2FormerConfig(train_num_points=POINTS["num_points"],
                               oversample_ratio=POINTS["oversample_ratio"],
                               importance_sample_ratio=POINTS["importance_sample_ratio"])
    loss = Mask2FormerLoss(config, weight_dict={})
    x = torch.from_numpy(pred).requires_grad_(grad)
    with torch_rand_from(monkeypatch, [np.asarray(cand)[rows], np.asarray(fill)[rows]]):
        out = loss.loss_masks(x, mask_labels(batch), hf_indices(match, valid),
                              torch.tensor(float(max(valid.sum(), 1))))
    return out, x


def test_masks_term_matches_hf_mask2former(monkeypatch):
    outputs, batch = make_problem(seed=0, num_layers=2)
    match = random_match(np.random.default_rng(0), 2, 5, batch["box_valid"])
    batch["loss_rng"] = jax.random.PRNGKey(3)
    _, m = jitted("masks", tuple(POINTS.items()))(outputs, batch, match)
    base = loss_rng(batch, 0)
    for layer, suffix in ((0, "_0"), (1, "")):
        key = jax.random.fold_in(base, layer)
        want, _ = hf_mask2former(outputs["pred_masks"][layer], batch, match[layer], key,
                                 monkeypatch)
        for name in ("loss_mask", "loss_dice"):
            ref = float(want[name])
            assert ref > 0.05
            np.testing.assert_allclose(float(m[name + suffix]), ref, rtol=1e-4)
    assert float(m["loss_mask"]) != float(m["loss_mask_0"])  # the layers really differ


def test_masks_term_gradient_matches_torch(monkeypatch):
    outputs, batch = make_problem(seed=1, num_layers=1)
    match = random_match(np.random.default_rng(1), 1, 5, batch["box_valid"])
    c = criterion("masks", POINTS)
    grad = jax.jit(jax.grad(lambda pm: c(dict(outputs, pred_masks=pm), batch, match=match)[0]))(
        jnp.asarray(outputs["pred_masks"]))
    key = jax.random.fold_in(loss_rng(batch, 0), 0)  # layer 0's key
    want, x = hf_mask2former(outputs["pred_masks"][0], batch, match[0], key, monkeypatch,
                             grad=True)
    (WEIGHTS["loss_mask"] * want["loss_mask"] + WEIGHTS["loss_dice"] * want["loss_dice"]
     ).backward()
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.abs(x.grad.numpy()).max() > 1e-4
    np.testing.assert_allclose(np.asarray(grad[0]), x.grad.numpy(), rtol=1e-4, atol=1e-6)


def hf_detr_masks(pred, batch, match, grad=False):
    """HF DETR's ImageLoss.loss_masks on one layer pred [B, Q, h, w]."""
    valid = batch["box_valid"]
    x = torch.from_numpy(pred).requires_grad_(grad)
    targets = [{"masks": m} for m in mask_labels(batch)]
    loss = ImageLoss(matcher=None, num_classes=NUM_CLASSES, eos_coef=0.1, losses=["masks"])
    out = loss.loss_masks({"pred_masks": x}, targets, hf_indices(match, valid),
                          float(max(valid.sum(), 1)))
    return out, x


def test_masks_full_matches_hf_detr_on_the_last_layer():
    """DETR's mask head: pred_masks [1, ...] of L = 3 layers; the mask losses are [L] with
    zeros for the two layers without masks, and the total counts the last once."""
    outputs, batch = make_problem(seed=2, num_layers=3, mask_layers=1)
    match = random_match(np.random.default_rng(2), 3, 5, batch["box_valid"])
    total, m = jitted("masks_full", ())(outputs, batch, match)
    want, _ = hf_detr_masks(outputs["pred_masks"][0], batch, match[-1])
    for name in ("loss_mask", "loss_dice"):
        assert float(want[name]) > 0.01
        np.testing.assert_allclose(float(m[name]), float(want[name]), rtol=1e-4)
        assert float(m[name + "_0"]) == 0.0 and float(m[name + "_1"]) == 0.0
    np.testing.assert_allclose(float(total), 5.0 * float(want["loss_mask"])
                               + 2.0 * float(want["loss_dice"]), rtol=1e-4)
    # aux_loss off: the same last-layer values, one layer
    _, m1 = jitted("masks_full", (), aux_loss=False)(outputs, batch, match[-1:])
    np.testing.assert_allclose(float(m1["loss_mask"]), float(m["loss_mask"]), rtol=1e-6)
    assert "loss_mask_0" not in m1


def test_masks_full_gradient_matches_torch():
    outputs, batch = make_problem(seed=3, num_layers=1)
    match = random_match(np.random.default_rng(3), 1, 5, batch["box_valid"])
    c = criterion("masks_full", {})
    grad = jax.jit(jax.grad(lambda pm: c(dict(outputs, pred_masks=pm), batch, match=match)[0]))(
        jnp.asarray(outputs["pred_masks"]))
    want, x = hf_detr_masks(outputs["pred_masks"][0], batch, match[0], grad=True)
    (5.0 * want["loss_mask"] + 2.0 * want["loss_dice"]).backward()
    assert np.abs(x.grad.numpy()).max() > 1e-5
    np.testing.assert_allclose(np.asarray(grad[0]), x.grad.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("canvas", [(24, 32), (22, 30)])
def test_upsample_masks_is_torch_bilinear_at_the_stride(canvas):
    """= interpolate(size=(4h, 4w), bilinear, align_corners=False), cropped to the canvas (the
    whole of it, i.e. interpolate(size=canvas), when the canvas is (4h, 4w))."""
    x = np.random.default_rng(4).normal(size=(3, 6, 8)).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x)[:, None], size=(24, 32), mode="bilinear",
                         align_corners=False)[:, 0, : canvas[0], : canvas[1]].numpy()
    got = np.asarray(upsample_masks(jnp.asarray(x), canvas))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dice_hand_worked_4x4():
    """Saturated logits: p = 1 on 6 pixels; the target has 4, 3 of them shared:
    1 - (2 * 3 + 1) / (6 + 4 + 1) = 4 / 11."""
    pred = np.full((4, 4), -30.0, np.float32)
    pred[0, :3] = pred[1, :3] = 30.0
    target = np.zeros((4, 4), np.float32)
    target[1, :3] = 1
    target[2, 0] = 1
    got = float(dice_loss(jnp.asarray(pred.reshape(1, -1)), jnp.asarray(target.reshape(1, -1)))[0])
    np.testing.assert_allclose(got, 4 / 11, rtol=1e-6)


def test_masks_full_hand_worked_4x4():
    """One image, one 4x4 target with 4 ones, its query's mask logits 0 (p = 1/2 everywhere,
    also after upsampling a [1, 1] stride-4 mask): dice = 1 - (2 * 2 + 1) / (8 + 4 + 1) = 8/13;
    focal per pixel = alpha_t * (1/2)^2 * log 2, mean = (4 * 0.25 + 12 * 0.75) / 16 / 4 * log 2."""
    target = np.zeros((1, 1, 4, 4), np.uint8)
    target[0, 0, 1:3, 1:3] = 1
    outputs = {"pred_logits": np.zeros((1, 1, 2, NUM_CLASSES + 1), np.float32),
               "pred_boxes": np.full((1, 1, 2, 4), 0.5, np.float32),
               "pred_masks": np.stack([np.zeros((1, 1)), np.full((1, 1), 5.0)])[None, None]
               .reshape(1, 1, 2, 1, 1).astype(np.float32)}
    batch = {"labels": np.zeros((1, 1), np.int32), "boxes": np.full((1, 1, 4), 0.5, np.float32),
             "box_valid": np.ones((1, 1), bool), "masks": target}
    _, m = jitted("masks_full", ())(outputs, batch, np.zeros((1, 1, 1), np.int32))
    np.testing.assert_allclose(float(m["loss_dice"]), 8 / 13, rtol=1e-6)
    np.testing.assert_allclose(float(m["loss_mask"]), (4 * 0.25 + 12 * 0.75) / 16 / 4 * np.log(2),
                               rtol=1e-6)


@pytest.mark.parametrize("term,settings", [("masks", POINTS), ("masks_full", {})])
def test_zero_object_images_give_finite_zero_losses(term, settings):
    """No valid slot anywhere (matched by the matcher, not given): losses 0, gradients finite."""
    outputs, batch = make_problem(seed=5, num_layers=2, num_valid=(0, 0))
    c = criterion(term, settings)

    def loss(pm):
        total, m = c(dict(outputs, pred_masks=pm), batch)
        return total, m

    (total, m), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        jnp.asarray(outputs["pred_masks"]))
    for name in ("loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
        assert float(m[name]) == 0.0, name
    assert float(total) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_mask_terms_error_lines():
    outputs, batch = make_problem(seed=6, num_layers=1)
    match = np.zeros((1, 2, 3), np.int32)
    c = criterion("masks", POINTS)
    with pytest.raises(ValueError, match="needs outputs\\['pred_masks'\\]"):
        c({k: v for k, v in outputs.items() if k != "pred_masks"}, batch, match=match)
    with pytest.raises(ValueError, match="needs batch\\['masks'\\]"):
        c(outputs, {k: v for k, v in batch.items() if k != "masks"}, match=match)
    with pytest.raises(ValueError, match="not at stride 4"):
        c(outputs, dict(batch, masks=batch["masks"][..., :12, :16]), match=match)
    with pytest.raises(ValueError, match="oversample_ratio"):
        criterion("masks", dict(POINTS, oversample_ratio=0.5))(outputs, batch, match=match)


def test_query_groups_fold_pred_masks():
    """Group DETR groups (K = 2): pred_masks are folded with the other predictions and the
    losses are the mean of each group's own (deterministic `masks_full`, box matching)."""
    outputs, batch = make_problem(seed=7, num_layers=2, num_q=8)
    c = criterion("masks_full", {}, costs={"bbox": 5.0, "giou": 2.0})
    run = jax.jit(lambda o, b, k: c(dict(o, num_query_groups=k), b)[1], static_argnums=2)
    grouped = run(outputs, batch, 2)
    halves = [run({k: v[:, :, g * 4:(g + 1) * 4] for k, v in outputs.items()}, batch, 1)
              for g in range(2)]
    for name in ("loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
        want = 0.5 * (float(halves[0][name]) + float(halves[1][name]))
        np.testing.assert_allclose(float(grouped[name]), want, rtol=1e-5)
    assert float(halves[0]["loss_mask"]) != float(halves[1]["loss_mask"])


def test_mask_terms_skip_encoder_proposals_without_masks():
    """Two-stage proposals (enc_outputs without pred_masks) get no `loss_mask_enc`; the decoder
    layers' mask losses are unchanged by them."""
    outputs, batch = make_problem(seed=8, num_layers=1)
    rng = np.random.default_rng(8)
    enc = {"pred_logits": rng.normal(size=(2, 12, NUM_CLASSES)).astype(np.float32),
           "pred_boxes": np.full((2, 12, 4), 0.3, np.float32)}
    c = criterion("masks_full", {}, costs={"bbox": 5.0, "giou": 2.0})
    _, with_enc = jax.jit(lambda o, b: c(o, b))(dict(outputs, enc_outputs=enc), batch)
    _, without = jax.jit(lambda o, b: c(o, b))(outputs, batch)
    assert "loss_mask_enc" not in with_enc and "loss_dice_enc" not in with_enc
    np.testing.assert_allclose(float(with_enc["loss_mask"]), float(without["loss_mask"]))
