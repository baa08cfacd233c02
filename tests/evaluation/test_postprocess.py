"""Tests for detr_jax.evaluation.postprocess."""

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.evaluation.postprocess import postprocess


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
