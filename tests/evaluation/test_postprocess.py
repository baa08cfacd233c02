"""Tests for detr_jax.evaluation.postprocess: `postprocess` (softmax heads) and
`postprocess_sigmoid` (sigmoid heads, against Hugging Face's Deformable DETR processor)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.evaluation.postprocess import postprocess, postprocess_sigmoid


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_hand_worked_example():
    # 1 image, 2 queries, 2 classes + no-object (index 2).
    logits = np.array([[[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]]], np.float32)
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]], np.float32)
    orig_size = np.array([[100, 200]], np.int32)  # h=100, w=200

    out = postprocess(jnp.asarray(logits), jnp.asarray(boxes), jnp.asarray(orig_size), top_k=2)

    # query 0: class 0, p = e^2 / (e^2 + 1 + e); query 1: class 1, p = e^3 / (e^3 + 2).
    s0 = np.e**2 / (np.e**2 + 1 + np.e)
    s1 = np.e**3 / (np.e**3 + 2)
    assert s1 > s0
    np.testing.assert_allclose(np.asarray(out["scores"]), [[s1, s0]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["labels"]), [[1, 0]])
    np.testing.assert_array_equal(np.asarray(out["queries"]), [[1, 0]])
    assert out["labels"].dtype == jnp.int32
    # query 1: cx=50, cy=75, w=100, h=50 px -> [0, 50, 100, 100]
    # query 0: cx=100, cy=50, w=40, h=40 px -> [80, 30, 120, 70]
    np.testing.assert_allclose(
        np.asarray(out["boxes"]), [[[0, 50, 100, 100], [80, 30, 120, 70]]], atol=1e-4
    )


def test_no_object_column_is_ignored():
    # no-object dominates, but the label must be the best *object* class
    logits = jnp.array([[[0.0, 1.0, 9.0]]])
    boxes = jnp.array([[[0.5, 0.5, 1.0, 1.0]]])
    out = postprocess(logits, boxes, jnp.array([[10, 10]]), top_k=5)
    assert out["scores"].shape == (1, 1)  # K = min(top_k, Q)
    assert int(out["labels"][0, 0]) == 1
    np.testing.assert_allclose(float(out["scores"][0, 0]), _softmax(np.array([0, 1.0, 9]))[1],
                               rtol=1e-5)


def test_top_k_ordering_and_sizes():
    rng = np.random.default_rng(0)
    b, q, c, k = 2, 10, 4, 3
    logits = rng.normal(size=(b, q, c + 1)).astype(np.float32) * 3
    cxcy = rng.uniform(0.2, 0.8, size=(b, q, 2))
    wh = rng.uniform(0.05, 0.3, size=(b, q, 2))
    boxes = np.concatenate([cxcy, wh], -1).astype(np.float32)
    orig_size = np.array([[480, 640], [300, 200]], np.int32)

    fn = jax.jit(postprocess, static_argnames="top_k")
    out = jax.device_get(fn(logits, boxes, orig_size, top_k=k))
    assert out["scores"].shape == (b, k)
    assert out["labels"].shape == (b, k)
    assert out["boxes"].shape == (b, k, 4)

    probs = _softmax(logits)[..., :-1]
    for i in range(b):
        all_scores = probs[i].max(-1)
        order = np.argsort(-all_scores)[:k]
        np.testing.assert_allclose(out["scores"][i], all_scores[order], rtol=1e-5)
        assert np.all(np.diff(out["scores"][i]) <= 0)
        np.testing.assert_array_equal(out["labels"][i], probs[i].argmax(-1)[order])
        np.testing.assert_array_equal(out["queries"][i], order)
        h, w = orig_size[i]
        cx, cy, bw, bh = boxes[i, order].T
        expect = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h,
                           (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
        np.testing.assert_allclose(out["boxes"][i], expect, rtol=1e-5, atol=1e-3)


def test_sigmoid_hand_worked_example():
    # 1 image, 2 queries, 2 classes: sigmoid(2) .881 (q0 c0), sigmoid(1) .731 (q1 c1),
    # sigmoid(0) .5 (q1 c0), sigmoid(-1) .269 (q0 c1); the top 3 of the 4 pairs.
    logits = jnp.array([[[2.0, -1.0], [0.0, 1.0]]])
    boxes = jnp.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    out = postprocess_sigmoid(logits, boxes, jnp.array([[100, 200]]), top_k=3)
    sig = lambda x: 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(np.asarray(out["scores"]), [[sig(2), sig(1), sig(0)]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["labels"]), [[0, 1, 0]])
    np.testing.assert_array_equal(np.asarray(out["queries"]), [[0, 1, 1]])
    assert out["labels"].dtype == jnp.int32 and out["queries"].dtype == jnp.int32
    # query 0: [80, 30, 120, 70] px; query 1: [0, 50, 100, 100] px (h=100, w=200).
    np.testing.assert_allclose(
        np.asarray(out["boxes"]),
        [[[80, 30, 120, 70], [0, 50, 100, 100], [0, 50, 100, 100]]], atol=1e-4)


@pytest.mark.parametrize("num_q,num_classes,top_k", [(30, 7, 100), (5, 3, 100), (12, 4, 7)])
def test_sigmoid_matches_hf_deformable_detr_post_process(num_q, num_classes, top_k):
    """The top-k over all (query, class) pairs = HF's post_process_object_detection."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import types

    import torch
    from transformers.models.deformable_detr import DeformableDetrImageProcessor

    rng = np.random.default_rng(num_q)
    b = 2
    logits = (rng.normal(size=(b, num_q, num_classes)) * 3).astype(np.float32)
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (b, num_q, 2)),
                            rng.uniform(0.05, 0.4, (b, num_q, 2))], -1).astype(np.float32)
    orig_size = np.array([[480, 640], [300, 200]], np.int32)

    fn = jax.jit(postprocess_sigmoid, static_argnames="top_k")
    out = jax.device_get(fn(logits, boxes, orig_size, top_k=top_k))
    k = min(top_k, num_q * num_classes)
    assert out["scores"].shape == (b, k) and out["boxes"].shape == (b, k, 4)

    hf_out = types.SimpleNamespace(logits=torch.as_tensor(logits),
                                   pred_boxes=torch.as_tensor(boxes))
    ref = DeformableDetrImageProcessor().post_process_object_detection(
        hf_out, threshold=0.0, target_sizes=torch.as_tensor(orig_size), top_k=top_k)
    for i in range(b):
        np.testing.assert_allclose(out["scores"][i], ref[i]["scores"].numpy(), rtol=1e-6)
        np.testing.assert_array_equal(out["labels"][i], ref[i]["labels"].numpy())
        np.testing.assert_allclose(out["boxes"][i], ref[i]["boxes"].numpy(), rtol=1e-5,
                                   atol=1e-3)
        # queries: the flat pair index // C, found independently from the scores.
        flat = 1 / (1 + np.exp(-logits[i].astype(np.float64).reshape(-1)))
        order = np.argsort(-flat, kind="stable")[:k]
        np.testing.assert_array_equal(out["queries"][i], order // num_classes)
        np.testing.assert_array_equal(out["labels"][i], order % num_classes)
