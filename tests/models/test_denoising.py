"""Contrastive denoising queries: hand-written mask, layout and mask against HF RT-DETR, noise
ranges over many draws, padding-only batches, jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.models.queries.denoising import (
    contrastive_denoising,
    denoising_attn_mask,
    noise_boxes,
    num_denoising_groups,
)

# Two images, G = 3 slots: image 0 has 3 real boxes, image 1 one (slot 0).
LABELS = np.array([[2, 0, 4], [1, 0, 0]], np.int32)
BOXES = np.array(
    [[[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.2], [0.7, 0.2, 0.3, 0.1]],
     [[0.4, 0.4, 0.2, 0.2], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
VALID = np.array([[True, True, True], [True, False, False]])
NUM_CLASSES = 5


def _rows(text: str) -> np.ndarray:
    return np.array([[c == "1" for c in row.split()[0]] for row in text.strip().splitlines()])


# 2 groups x 3 objects (Q_dn = 12) + 2 matching queries; columns: 12 denoising, 2 matching.
MASK_IMAGE0 = _rows("""
11111100000011
11111100000011
11111100000011
11111100000011
11111100000011
11111100000011
00000011111111
00000011111111
00000011111111
00000011111111
00000011111111
00000011111111
00000000000011
00000000000011
""")
# Image 1: only slot 0 is real, i.e. queries 0, 3 (group 0) and 6, 9 (group 1); the padding
# queries are hidden from everyone but see themselves.
MASK_IMAGE1 = _rows("""
10010000000011
11010000000011
10110000000011
10010000000011
10011000000011
10010100000011
00000010010011
00000011010011
00000010110011
00000010010011
00000010011011
00000010010111
00000000000011
00000000000011
""")


def _cdn(rng, labels, boxes, valid, **kw):
    fn = jax.jit(functools.partial(contrastive_denoising, num_classes=NUM_CLASSES, **kw))
    out = fn(rng, jnp.asarray(labels), jnp.asarray(boxes), jnp.asarray(valid))
    static = contrastive_denoising(  # the Python ints, outside jit
        rng, jnp.asarray(labels), jnp.asarray(boxes), jnp.asarray(valid),
        num_classes=NUM_CLASSES, **kw)
    return {k: np.asarray(v) for k, v in out.items()}, static["num_groups"], static["num_dn"]


def test_mask_by_hand_two_groups_three_objects():
    out, groups, num_dn = _cdn(jax.random.key(0), LABELS, BOXES, VALID, dn_number=12)
    assert (groups, num_dn) == (2, 12)
    mask = np.asarray(jax.jit(denoising_attn_mask, static_argnums=(0, 1, 2))(
        num_dn, groups, 2, jnp.asarray(out["valid"])))
    assert mask.shape == (2, 14, 14)
    np.testing.assert_array_equal(mask[0], MASK_IMAGE0)
    np.testing.assert_array_equal(mask[1], MASK_IMAGE1)
    np.testing.assert_array_equal(np.asarray(denoising_attn_mask(12, 2, 2))[0], MASK_IMAGE0)
    # Layout: per group [positives of slots 0..2, negatives of slots 0..2].
    np.testing.assert_array_equal(out["gt_index"][0], [0, 1, 2] * 4)
    np.testing.assert_array_equal(out["gt_index"][1], [0, -1, -1] * 4)
    np.testing.assert_array_equal(out["positive"][0], ([True] * 3 + [False] * 3) * 2)
    np.testing.assert_array_equal(out["positive"][1], [True] + [False] * 5 + [True] + [False] * 5)


def test_mask_rule_by_loops():
    num_dn, groups, q = 12, 3, 5
    valid = np.random.default_rng(0).uniform(size=(2, num_dn)) < 0.6
    mask = np.asarray(denoising_attn_mask(num_dn, groups, q, jnp.asarray(valid)))
    size = num_dn // groups
    for b in range(2):
        for i in range(num_dn + q):
            for j in range(num_dn + q):
                if j >= num_dn:
                    want = True
                elif i >= num_dn:
                    want = False
                else:
                    want = i // size == j // size and (bool(valid[b, j]) or i == j)
                assert mask[b, i, j] == want, (b, i, j)


def _hf_group(dn_number, label_noise_ratio=0.0, box_noise_scale=0.0, num_queries=4):
    torch = pytest.importorskip("torch")
    rt = pytest.importorskip("transformers.models.rt_detr.modeling_rt_detr")
    targets = [{"class_labels": torch.as_tensor(LABELS[b][VALID[b]], dtype=torch.int64),
                "boxes": torch.as_tensor(BOXES[b][VALID[b]])} for b in range(len(LABELS))]
    return rt.get_contrastive_denoising_training_group(
        targets, NUM_CLASSES, num_queries, lambda x: x, num_denoising_queries=dn_number,
        label_noise_ratio=label_noise_ratio, box_noise_scale=box_noise_scale)


@pytest.mark.parametrize("dn_number", [4, 12, 100])
def test_layout_and_mask_match_hf_rt_detr(dn_number):
    q = 4
    # HF's K = num_denoising_queries // max_gt (its budget counts groups of objects); ours is
    # dn_number // (2 * max_objects) (a budget of queries): the same K from half the budget.
    cls, box, hf_mask, meta = _hf_group(dn_number // 2, num_queries=q)
    out, groups, num_dn = _cdn(jax.random.key(1), LABELS, BOXES, VALID, dn_number=dn_number,
                               label_noise_ratio=0.0, box_noise_scale=0.0, max_objects=3)
    assert groups == meta["dn_num_group"] == num_denoising_groups(dn_number, 3)
    assert [num_dn, q] == [int(n) for n in meta["dn_num_split"]]
    np.testing.assert_array_equal(out["labels"], cls.numpy())  # padding = num_classes in both
    np.testing.assert_allclose(out["boxes"], box.numpy(), atol=1e-6)  # padding zeros in both
    for b, hf_pos in enumerate(meta["dn_positive_idx"]):
        np.testing.assert_array_equal(np.nonzero(out["positive"][b])[0], hf_pos.numpy())
    # HF's mask is additive (0 = attend, -inf = masked); older versions bool True = masked.
    hf = hf_mask.numpy()
    hf_attend = ~hf if hf.dtype == bool else hf == 0
    np.testing.assert_array_equal(np.asarray(denoising_attn_mask(num_dn, groups, q))[0],
                                  hf_attend)
    # With padding hidden: HF's pattern minus the padding columns (their diagonal kept).
    masked = np.asarray(denoising_attn_mask(num_dn, groups, q, jnp.asarray(out["valid"])))
    keys = np.concatenate([out["valid"], np.ones((2, q), bool)], 1)
    eye = np.eye(num_dn + q, dtype=bool)
    np.testing.assert_array_equal(masked, hf_attend & (keys[:, None] | eye))


def test_hf_group_count_is_twice_ours_for_the_same_budget():
    _, _, _, meta = _hf_group(100)
    assert meta["dn_num_group"] == 100 // 3 == 33
    assert num_denoising_groups(100, 3) == 100 // 6 == 16


def test_box_noise_ranges_over_draws():
    # Boxes far from the border (corner noise < 2 * diff never leaves [0, 1]).
    boxes = jnp.array([[0.5, 0.5, 0.2, 0.3], [0.4, 0.6, 0.3, 0.2], [0.5, 0.45, 0.1, 0.1]])
    negative = jnp.array([False, True, True])
    keys = jax.random.split(jax.random.key(2), 2000)
    scale = 0.7
    corners = np.asarray(jax.jit(jax.vmap(
        lambda k: noise_boxes(k, boxes, negative, scale)))(keys))  # [2000, 3, 4]
    b = np.asarray(boxes)
    xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], -1)
    diff = np.concatenate([b[:, 2:] / 2, b[:, 2:] / 2], -1) * scale
    rel = np.abs(corners - xyxy) / diff  # r per coordinate
    assert rel[:, 0].max() < 1 + 1e-5 and rel[:, 0].min() >= 0
    assert rel[:, 1:].min() >= 1 - 1e-5 and rel[:, 1:].max() < 2 + 1e-5
    assert rel[:, 0].mean() == pytest.approx(0.5, abs=0.03)  # U[0, 1) fills its range
    assert rel[:, 1:].mean() == pytest.approx(1.5, abs=0.03)
    sign = np.sign(corners - xyxy)
    assert abs(sign.mean()) < 0.05 and np.all(sign != 0)

    # The public output: positives never invert, so their corners are recoverable from boxes.
    lab = jnp.zeros((1, 3), jnp.int32)
    run = jax.jit(jax.vmap(lambda k: contrastive_denoising(
        k, lab, boxes[None], jnp.ones((1, 3), bool), num_classes=3, dn_number=12,
        box_noise_scale=scale)["boxes"]))
    out = np.asarray(run(keys[:500]))[:, 0]  # [500, Q_dn=12, 4]; group 0 positives = 0..2
    pos = out[:, [0, 1, 2, 6, 7, 8]]
    pos_xyxy = np.concatenate([pos[..., :2] - pos[..., 2:] / 2, pos[..., :2] + pos[..., 2:] / 2],
                              -1)
    tiled = np.tile(xyxy, (2, 1))
    assert np.all(np.abs(pos_xyxy - tiled) <= np.tile(diff, (2, 1)) + 1e-6)
    assert out.min() >= 0 and out.max() <= 1


def test_label_flip_rate():
    ratio, classes = 0.6, 50
    labels = jnp.full((1, 4), 7, jnp.int32)
    boxes = jnp.full((1, 4, 4), 0.5)
    keys = jax.random.split(jax.random.key(3), 2000)
    run = jax.jit(jax.vmap(lambda k: contrastive_denoising(
        k, labels, boxes, jnp.ones((1, 4), bool), num_classes=classes, dn_number=200,
        label_noise_ratio=ratio)["labels"]))
    out = np.asarray(run(keys))  # [2000, 1, 200]
    assert out.min() >= 0 and out.max() < classes
    p = ratio * 0.5 * (1 - 1 / classes)  # a replacement may draw the same class
    rate = (out != 7).mean()
    assert abs(rate - p) < 3 * np.sqrt(p * (1 - p) / out.size), rate


@pytest.mark.parametrize("valid", [VALID * np.array([[True], [False]]), np.zeros((2, 3), bool)])
def test_padding_images_and_batches_are_finite(valid):
    boxes = np.where(valid[..., None], BOXES, np.nan)  # padding slots hold garbage
    out, groups, num_dn = _cdn(jax.random.key(4), LABELS, boxes, valid)
    assert (groups, num_dn) == (16, 96)
    for key in ("boxes", "reference_logits"):
        assert np.all(np.isfinite(out[key]))
    pad = ~out["valid"]
    assert np.all(out["labels"][pad] == NUM_CLASSES) and np.all(out["boxes"][pad] == 0)
    assert np.all(out["gt_index"][pad] == -1) and not np.any(out["positive"][pad])
    mask = denoising_attn_mask(num_dn, groups, 3, jnp.asarray(out["valid"]))
    logits = jnp.where(mask, 0.0, -jnp.inf)  # every row keeps at least its own query
    assert np.all(np.isfinite(np.asarray(jax.nn.softmax(logits, axis=-1))))


def test_zero_slots():
    out, groups, num_dn = _cdn(jax.random.key(5), np.zeros((2, 0), np.int32),
                               np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), bool))
    assert (groups, num_dn) == (50, 0) and out["boxes"].shape == (2, 0, 4)
    assert denoising_attn_mask(0, groups, 3).shape == (1, 3, 3)


def test_positives_only_layout_dn_detr():
    """contrastive=False: K = dn_number // G groups of G positives (no negatives), noise < 1."""
    labels = jnp.asarray([[1, 2, 0], [3, 0, 0]], jnp.int32)
    boxes = jnp.full((2, 3, 4), 0.5, jnp.float32).at[..., 2:].set(0.2)
    valid = jnp.asarray([[True, True, False], [True, False, False]])
    dn = contrastive_denoising(jax.random.PRNGKey(0), labels, boxes, valid, num_classes=4,
                               dn_number=7, label_noise_ratio=0.0, contrastive=False)
    assert (dn["num_groups"], dn["num_dn"]) == (2, 6)  # 7 // 3 = 2 groups of 3 slots
    np.testing.assert_array_equal(np.asarray(dn["positive"]), np.asarray(dn["valid"]))
    np.testing.assert_array_equal(np.asarray(dn["gt_index"][0]), [0, 1, -1, 0, 1, -1])
    np.testing.assert_array_equal(np.asarray(dn["labels"][1]), [3, 4, 4, 3, 4, 4])
    # Every corner moves by less than one half-size (r < 1): inside [0.3, 0.7].
    real = np.asarray(dn["boxes"])[np.asarray(dn["valid"])]
    corners = np.concatenate([real[:, :2] - real[:, 2:] / 2, real[:, :2] + real[:, 2:] / 2], 1)
    assert corners.min() >= 0.3 - 1e-6 and corners.max() <= 0.7 + 1e-6
