"""Tests of the `denoising` loss term (detr_jax/losses/denoising.py) against HF RT-DETR's loss
functions, numpy references and a hand-worked case."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.config_base import base_config
from detr_jax.losses import LOSS_TERMS, build_criterion, loss_problems
from detr_jax.losses.denoising import denoising_term
from detr_jax.models.queries.denoising import contrastive_denoising

DN = ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn")


def make_case(counts, num_slots, num_classes=5, num_layers=3, dn_number=40, seed=0,
              softmax=False):
    """Batch with `counts[b]` valid (prefix) slots of `num_slots`, the CDN layout of
    contrastive_denoising (no label noise, box noise 0.8) and random dn predictions."""
    rng = np.random.default_rng(seed)
    bsz = len(counts)
    box_valid = np.arange(num_slots)[None] < np.asarray(counts)[:, None]
    labels = rng.integers(0, num_classes, (bsz, num_slots)).astype(np.int32)
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (bsz, num_slots, 2)),
                            rng.uniform(0.05, 0.3, (bsz, num_slots, 2))], -1).astype(np.float32)
    boxes = np.where(box_valid[..., None], boxes, 0.0).astype(np.float32)
    dn = contrastive_denoising(jax.random.PRNGKey(seed), jnp.asarray(labels), jnp.asarray(boxes),
                               jnp.asarray(box_valid), num_classes=num_classes,
                               dn_number=dn_number, label_noise_ratio=0.0, box_noise_scale=0.8)
    q = dn["num_dn"]
    k = num_classes + 1 if softmax else num_classes
    logits = rng.normal(0, 2, (num_layers, bsz, q, k)).astype(np.float32)
    # Padding queries: very negative logits, so that HF (which keeps them as no object in its
    # focal sum) and ours (which leaves them out) agree to ~1e-30.
    logits = np.where(np.asarray(dn["valid"])[None, ..., None], logits, -40.0).astype(np.float32)
    pred = 1 / (1 + np.exp(-rng.normal(0, 1, (num_layers, bsz, q, 4))))
    outputs = {
        "pred_logits": jnp.zeros((num_layers, bsz, 7, k)),
        "pred_boxes": jnp.full((num_layers, bsz, 7, 4), 0.5),
        "dn_outputs": {"pred_logits": jnp.asarray(logits),
                       "pred_boxes": jnp.asarray(pred, jnp.float32)},
        "dn_meta": {"num_dn": q, "dn_groups": dn["num_groups"], "dn_positive": dn["positive"],
                    "dn_gt_index": dn["gt_index"], "dn_valid": dn["valid"]},
    }
    batch = {"labels": jnp.asarray(labels), "boxes": jnp.asarray(boxes),
             "box_valid": jnp.asarray(box_valid)}
    return outputs, batch


def run(outputs, batch, num_classes=5, **kw):
    fn = jax.jit(lambda o, b: denoising_term(o, b, None, num_classes=num_classes, **kw))
    return {k: np.asarray(v) for k, v in fn(outputs, batch).items()}


def hf_dn_losses(outputs, batch, alpha=0.3, gamma=2.0):
    """HF RT-DETR's dn losses per layer: its get_cdn_matched_indices, loss_boxes and
    loss_labels_focal, with num_boxes * dn_num_group as in RTDetrLoss.forward."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from transformers.loss.loss_for_object_detection import sigmoid_focal_loss
    from transformers.loss.loss_rt_detr import RTDetrLoss

    meta, num_classes = outputs["dn_meta"], outputs["dn_outputs"]["pred_logits"].shape[-1]
    valid = np.asarray(batch["box_valid"])
    targets = [{"class_labels": torch.as_tensor(np.array(batch["labels"])[b][valid[b]],
                                                dtype=torch.int64),
                "boxes": torch.as_tensor(np.array(batch["boxes"])[b][valid[b]])}
               for b in range(valid.shape[0])]
    positive = np.asarray(meta["dn_positive"])
    hf_meta = {"dn_positive_idx": [torch.as_tensor(np.nonzero(p)[0]) for p in positive],
               "dn_num_group": meta["dn_groups"]}
    indices = RTDetrLoss.get_cdn_matched_indices(hf_meta, targets)
    num_boxes = max(sum(len(t["class_labels"]) for t in targets), 1) * meta["dn_groups"]
    shim = types.SimpleNamespace(
        _get_source_permutation_idx=lambda ind: RTDetrLoss._get_source_permutation_idx(None, ind))

    def focal(o):
        # RTDetrLoss.loss_labels_focal, whose call is broken in this transformers version
        # (sigmoid_focal_loss(src_logits, target, self.alpha, self.gamma) passes alpha as
        # num_boxes and an int64 target): its body with the intended arguments.
        src_logits = o["logits"]
        idx = shim._get_source_permutation_idx(indices)
        original = torch.cat([t["class_labels"][i] for t, (_, i) in
                              zip(targets, indices, strict=True)])
        target_classes = torch.full(src_logits.shape[:2], num_classes, dtype=torch.int64)
        target_classes[idx] = original
        target = F.one_hot(target_classes, num_classes=num_classes + 1)[..., :-1]
        loss = sigmoid_focal_loss(src_logits, target.float(), 1.0, alpha, gamma)  # .mean(1).sum()
        return loss * src_logits.shape[1] / num_boxes

    logits = torch.as_tensor(np.array(outputs["dn_outputs"]["pred_logits"]))
    boxes = torch.as_tensor(np.array(outputs["dn_outputs"]["pred_boxes"]))
    out = {k: [] for k in DN}
    for layer in range(logits.shape[0]):
        o = {"logits": logits[layer], "pred_boxes": boxes[layer]}
        ce = focal(o)
        bx = RTDetrLoss.loss_boxes(shim, o, targets, indices, num_boxes)
        out["loss_ce_dn"].append(float(ce))
        out["loss_bbox_dn"].append(float(bx["loss_bbox"]))
        out["loss_giou_dn"].append(float(bx["loss_giou"]))
    return {k: np.asarray(v) for k, v in out.items()}


def np_reference(outputs, batch, softmax=False, alpha=0.25, gamma=2.0, eos_coef=0.1):
    """Loop-over-queries numpy reference (float64)."""
    meta = outputs["dn_meta"]
    logits = np.asarray(outputs["dn_outputs"]["pred_logits"], np.float64)
    pred = np.asarray(outputs["dn_outputs"]["pred_boxes"], np.float64)
    labels, gtb = np.asarray(batch["labels"]), np.asarray(batch["boxes"], np.float64)
    valid, pos = np.asarray(meta["dn_valid"]), np.asarray(meta["dn_positive"])
    gidx = np.asarray(meta["dn_gt_index"])
    norm = max(np.asarray(batch["box_valid"]).sum(), 1) * meta["dn_groups"]
    num_layers, bsz, q, k = logits.shape
    out = {key: np.zeros(num_layers) for key in DN}
    for layer in range(num_layers):
        ce_num = ce_den = 0.0
        for b in range(bsz):
            for j in range(q):
                if not valid[b, j]:
                    continue
                x = logits[layer, b, j]
                if softmax:
                    cls = labels[b, gidx[b, j]] if pos[b, j] else k - 1
                    w = eos_coef if cls == k - 1 else 1.0
                    lse = np.log(np.sum(np.exp(x - x.max()))) + x.max()
                    ce_num += w * (lse - x[cls])
                    ce_den += w
                else:
                    y = np.zeros(k)
                    if pos[b, j]:
                        y[labels[b, gidx[b, j]]] = 1.0
                    p = 1 / (1 + np.exp(-x))
                    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
                    pt = p * y + (1 - p) * (1 - y)
                    ce_num += np.sum((alpha * y + (1 - alpha) * (1 - y)) * (1 - pt) ** gamma * bce)
                if pos[b, j]:
                    s, t = pred[layer, b, j], gtb[b, gidx[b, j]]
                    out["loss_bbox_dn"][layer] += np.abs(s - t).sum() / norm
                    out["loss_giou_dn"][layer] += (1 - np_giou(s, t)) / norm
        out["loss_ce_dn"][layer] = ce_num / ce_den if softmax else ce_num / norm
    return out


def np_giou(a, b):
    a = np.array([a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2])
    b = np.array([b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2])
    area = lambda z: (z[2] - z[0]) * (z[3] - z[1])
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_registered_with_its_losses():
    term = LOSS_TERMS["denoising"]
    assert not term.needs_matching and term.outputs == DN


@pytest.mark.parametrize("counts", [(3, 1, 4), (2, 0, 4, 1)])
def test_matches_hf_rt_detr(counts):
    outputs, batch = make_case(counts, num_slots=4)
    assert outputs["dn_meta"]["dn_groups"] == 5  # 40 // (2 * 4)
    ours, hf = run(outputs, batch, alpha=0.3), hf_dn_losses(outputs, batch, alpha=0.3)
    for k in DN:
        assert ours[k].shape == (3,)
        np.testing.assert_allclose(ours[k], hf[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("softmax", [False, True])
def test_matches_numpy_reference(softmax):
    outputs, batch = make_case((2, 0, 3), num_slots=3, softmax=softmax, seed=1)
    ours = run(outputs, batch, eos_coef=0.2) if softmax else run(outputs, batch, alpha=0.3)
    ref = np_reference(outputs, batch, softmax=softmax, alpha=0.3, eos_coef=0.2)
    for k in DN:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_hand_worked_one_object_two_groups():
    """1 image, 1 object (+ 1 padding slot), 2 groups: queries [pos, pos-pad, neg, neg-pad] x 2.
    Positives 0 and 4 alone enter the box terms; 0, 2, 4, 6 the class term; pads none."""
    labels = jnp.asarray([[1, 0]], jnp.int32)
    gt = jnp.asarray([[[0.5, 0.5, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]]], jnp.float32)
    box_valid = jnp.asarray([[True, False]])
    dn = contrastive_denoising(jax.random.PRNGKey(0), labels, gt, box_valid, num_classes=2,
                               dn_number=4, label_noise_ratio=0.0, max_objects=1)
    assert dn["num_groups"] == 2 and dn["num_dn"] == 8
    np.testing.assert_array_equal(dn["positive"][0], [1, 0, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(dn["valid"][0], [1, 0, 1, 0, 1, 0, 1, 0])
    pred = np.full((1, 1, 8, 4), 0.1, np.float32)
    pred[0, 0, 0] = [0.5, 0.5, 0.2, 0.2]  # exact: L1 0, 1 - GIoU 0
    pred[0, 0, 4] = [0.6, 0.5, 0.2, 0.2]  # L1 0.1; IoU 1/3 = GIoU (hull = union)
    outputs = {"pred_logits": jnp.zeros((1, 1, 3, 2)),
               "dn_outputs": {"pred_logits": jnp.zeros((1, 1, 8, 2)),
                              "pred_boxes": jnp.asarray(pred)},
               "dn_meta": {"num_dn": 8, "dn_groups": 2, "dn_positive": dn["positive"],
                           "dn_gt_index": dn["gt_index"]}}  # dn_valid left to its default
    batch = {"labels": labels, "boxes": gt, "box_valid": box_valid}
    got = run(outputs, batch, num_classes=2)
    # Logits 0 (p = 1/2): a y=1 element costs 0.25 * 0.25 ln2, a y=0 one 0.75 * 0.25 ln2.
    # Positives (label 1): 0.0625 + 0.1875; negatives: 2 * 0.1875 -> (2*0.25 + 2*0.375) ln2 / 2.
    np.testing.assert_allclose(got["loss_ce_dn"], [0.625 * np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(got["loss_bbox_dn"], [0.1 / 2], rtol=1e-5)
    np.testing.assert_allclose(got["loss_giou_dn"], [(2 / 3) / 2], rtol=1e-5)

    def grads(name):
        f = lambda lg, bx: denoising_term(
            dict(outputs, dn_outputs={"pred_logits": lg, "pred_boxes": bx}), batch,
            num_classes=2)[name][0]
        return jax.jit(jax.grad(f, argnums=(0, 1)))(outputs["dn_outputs"]["pred_logits"],
                                           outputs["dn_outputs"]["pred_boxes"])

    g_ce, g_ce_box = grads("loss_ce_dn")
    np.testing.assert_array_equal(np.abs(g_ce[0, 0]).sum(-1) > 0, [1, 0, 1, 0, 1, 0, 1, 0])
    assert not np.any(g_ce_box)
    for name in ("loss_bbox_dn", "loss_giou_dn"):
        g_logit, g_box = grads(name)
        assert not np.any(g_logit) and np.all(np.isfinite(g_box))
        assert set(np.nonzero(np.abs(g_box[0, 0]).sum(-1))[0]) <= {0, 4}
        assert np.any(g_box[0, 0, 4])


def test_images_without_objects_and_all_padding():
    # Image 1 has no objects: its dn queries are all padding and change nothing.
    outputs, batch = make_case((2, 0), num_slots=2, seed=3)
    got = run(outputs, batch)
    ref = np_reference(outputs, batch)
    for k in DN:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, err_msg=k)
    lg = outputs["dn_outputs"]["pred_logits"].at[:, 1].set(5.0)
    bx = outputs["dn_outputs"]["pred_boxes"].at[:, 1].set(0.0)  # degenerate boxes
    moved = run(dict(outputs, dn_outputs={"pred_logits": lg, "pred_boxes": bx}), batch)
    for k in DN:
        np.testing.assert_allclose(moved[k], got[k], rtol=1e-6, err_msg=k)

    # All padding: finite zeros and finite gradients.
    outputs, batch = make_case((0, 0), num_slots=2, seed=4)
    bx = jnp.zeros_like(outputs["dn_outputs"]["pred_boxes"])
    outputs = dict(outputs, dn_outputs=dict(outputs["dn_outputs"], pred_boxes=bx))
    got = run(outputs, batch)
    for k in DN:
        np.testing.assert_array_equal(got[k], np.zeros(3), err_msg=k)
    g = jax.grad(lambda o: sum(jnp.sum(v) for v in denoising_term(o, batch, num_classes=5)
                               .values()))(outputs["dn_outputs"])
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))


def test_negatives_only_no_object_and_filler_images():
    """An image whose positives are left out (image_valid False) contributes nothing; negatives
    enter the class term only."""
    outputs, batch = make_case((2, 2), num_slots=2, seed=5)
    only_first = run(outputs, dict(batch, image_valid=jnp.asarray([True, False])))
    one = {k: v[:1] for k, v in batch.items()}
    meta = {k: (v[:1] if hasattr(v, "shape") else v) for k, v in outputs["dn_meta"].items()}
    dn1 = {k: v[:, :1] for k, v in outputs["dn_outputs"].items()}
    alone = run(dict(outputs, dn_outputs=dn1, dn_meta=meta), one)
    # Same sums; the normaliser still counts the filler image's boxes (as the criterion's).
    for k in DN:
        np.testing.assert_allclose(only_first[k] * 4, alone[k] * 2, rtol=1e-5, err_msg=k)
    # Moving a negative's box changes no box loss.
    neg = ~np.asarray(outputs["dn_meta"]["dn_positive"]) & np.asarray(outputs["dn_meta"]
                                                                      ["dn_valid"])
    bx = jnp.where(jnp.asarray(neg)[None, ..., None], 0.9, outputs["dn_outputs"]["pred_boxes"])
    moved = run(dict(outputs, dn_outputs=dict(outputs["dn_outputs"], pred_boxes=bx)), batch)
    base = run(outputs, batch)
    for k in ("loss_bbox_dn", "loss_giou_dn"):
        np.testing.assert_allclose(moved[k], base[k], rtol=1e-6)


def _config(aux_loss=True):
    config = base_config()
    config.num_classes = 5
    config.model.heads.name = "deformable"
    config.loss.terms = {"focal_labels": {}, "boxes": {}, "denoising": {"alpha": 0.25}}
    config.loss.weights = {"loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0,
                           "loss_ce_dn": 2.0, "loss_bbox_dn": 5.0, "loss_giou_dn": 2.0}
    config.matcher.costs = {"focal_class": 2.0, "bbox": 5.0, "giou": 2.0}
    config.loss.aux_loss = aux_loss
    return config


def test_absent_dn_outputs_and_the_criterion():
    outputs, batch = make_case((2, 1), num_slots=2, seed=6)
    plain = {k: outputs[k] for k in ("pred_logits", "pred_boxes")}
    got = run(plain, batch)
    for k in DN:
        np.testing.assert_array_equal(got[k], np.zeros(3))
    assert loss_problems(_config()) == []

    for aux in (True, False):
        criterion = build_criterion(_config(aux))
        assert criterion.terms["denoising"][1]["num_classes"] == 5
        total_plain, m_plain = jax.jit(criterion)(plain, batch)
        assert m_plain["loss_ce_dn"] == 0 and np.isfinite(total_plain)
        total, m = jax.jit(criterion)(outputs, batch)
        dn = run(outputs, batch)
        layers = slice(None) if aux else slice(-1, None)
        extra = sum(w * dn[k][layers].sum() for k, w in
                    (("loss_ce_dn", 2.0), ("loss_bbox_dn", 5.0), ("loss_giou_dn", 2.0)))
        np.testing.assert_allclose(total - total_plain, extra, rtol=1e-5)
        for k in DN:
            np.testing.assert_allclose(m[k], dn[k][-1], rtol=1e-5)
            assert (f"{k}_0" in m) == aux
