"""One predict_fn: the eval step, the Predictor and the eval transform's resize agree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from random_params import random_variables

from detr_jax import train
from detr_jax.core.sharding import to_global
from detr_jax.data import SHAPES_SPECS
from detr_jax.data.batching import collate
from detr_jax.data.shapes import ShapesDataset
from detr_jax.data.transforms import TransformConfig, detr_eval_transform
from detr_jax.evaluation.postprocess import postprocess, postprocess_sigmoid
from detr_jax.inference import (
    POSTPROCESSORS,
    SIGMOID_POSTPROCESSORS,
    Predictor,
    class_activation,
    eval_resize,
    make_predict_fn,
    preprocess,
)
from detr_jax.models import build_model

# Odd sizes: the first keeps its aspect (shorter side 96), the second hits max_size.
ODD_SIZES = [(333, 517), (333, 717)]
EVAL_CFG = TransformConfig(eval_size=96, max_size=160)


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    return config, build_model(config), random_variables(config, 0)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _eval_sample(image: np.ndarray) -> dict:
    """A raw sample as the COCO-format datasets build it, through the eval transform."""
    raw = {"image": image, "boxes": np.zeros((0, 4), np.float32),
           "labels": np.zeros((0,), np.int32), "image_id": 1,
           "orig_size": np.array(image.shape[:2], np.int32)}
    return detr_eval_transform(raw, EVAL_CFG)


@pytest.mark.parametrize("hw", ODD_SIZES)
def test_predictor_resizes_exactly_as_the_eval_transform(hw):
    image = _photo(*hw)
    sample = _eval_sample(image)
    batch = preprocess(image, EVAL_CFG.eval_size, EVAL_CFG.max_size)
    h, w = sample["image"].shape[:2]
    assert tuple(batch["size"][0]) == (h, w) and max(h, w) <= 160
    assert tuple(batch["orig_size"][0]) == hw
    ref, _ = collate([sample], buckets=[(96, 160)], max_boxes=1)
    np.testing.assert_array_equal(batch["image"][0, :h, :w], ref["image"][0, :h, :w])
    np.testing.assert_array_equal(batch["pixel_mask"][0, :h, :w], True)
    assert not batch["pixel_mask"][0, h:].any() and not batch["pixel_mask"][0, :, w:].any()


def test_eval_resize_follows_the_dataset():
    assert eval_resize(tiny_config()) == (0, 0)  # shapes: evaluated at its own size
    config = tiny_config(dataset="custom")
    config.transforms.eval_size, config.transforms.max_size = 96, 160
    assert eval_resize(config) == (96, 160)


def test_unknown_postprocessor_is_refused(tiny):
    assert set(POSTPROCESSORS) >= {"bbox"}
    with pytest.raises(ValueError, match="unknown postprocessors"):
        make_predict_fn(tiny[1], top_k=5, postprocessors=("segm_nope",))


def test_predict_fn_is_what_the_eval_step_returns(tiny):
    """Same batch, same params: the eval step's predictions are predict_fn's."""
    config, model, variables = tiny
    tx, schedule = train.make_optimizer_for(config, model, jax.random.PRNGKey(0))
    state = train.TrainState(
        step=jnp.zeros((), jnp.int32), params=variables["params"],
        batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
        rng=jax.random.PRNGKey(1),
    )
    mesh = train.make_mesh(config)
    _, p_eval, _, data_sharding = train.make_steps(config, model, tx, schedule, mesh, state)
    ds = ShapesDataset(SHAPES_SPECS["standard"], seed=0, num_val=3)
    batch, _ = collate(list(ds.val_samples()), buckets=config.image_buckets,
                       max_boxes=config.max_boxes, batch_size=4)  # with one filler
    post, metrics = jax.device_get(p_eval(state, to_global(batch, data_sharding)))
    top_k = min(config.eval.top_k, config.model.queries.num_queries)
    predictions, outputs = jax.jit(make_predict_fn(model, top_k=top_k))(variables, batch)
    assert set(predictions) == {"bbox"}
    real = batch["image_valid"]  # the filler's queries tie: their order is arbitrary
    want = {k: np.asarray(v)[real] for k, v in predictions["bbox"].items()}
    post = {k: np.asarray(v)[real] for k, v in post.items()}
    # Not bitwise: XLA compiles the model into the eval step's program (with the losses) and
    # into predict_fn's alone; float32 rounding differs by a few ulps.
    for k in ("labels", "queries"):
        np.testing.assert_array_equal(post[k], want[k])
    np.testing.assert_allclose(post["scores"], want["scores"], atol=1e-6)
    size = batch["orig_size"][real]
    scale = np.stack([size[:, 1], size[:, 0]] * 2, -1)[:, None]  # boxes / scale: normalised
    np.testing.assert_allclose(post["boxes"] / scale, want["boxes"] / scale, atol=1e-6)
    assert outputs["pred_logits"].shape == (2, 4, 10, 7)
    assert outputs["pred_boxes"].shape == (2, 4, 10, 4)
    assert np.isfinite(metrics["loss"])


def test_predictor_boxes_are_predict_fns_on_the_eval_batch(tiny):
    """The Predictor on an odd-sized photo = predict_fn on the eval pipeline's batch of it."""
    _, model, variables = tiny
    image = _photo(*ODD_SIZES[0], seed=1)
    predictor = Predictor(model, variables)
    got = predictor(image, 0.0, None, EVAL_CFG.eval_size, EVAL_CFG.max_size)
    batch, _ = collate([_eval_sample(image)], buckets=[(96, 160)], max_boxes=1)
    num_queries = model.queries.num_queries
    predictions, _ = jax.jit(make_predict_fn(model, top_k=num_queries))(variables, batch)
    want = jax.device_get(predictions["bbox"])
    assert len(got["scores"]) == num_queries  # threshold 0 keeps every query
    np.testing.assert_array_equal(got["queries"], want["queries"][0])
    np.testing.assert_array_equal(got["labels"], want["labels"][0])
    np.testing.assert_allclose(got["scores"], want["scores"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["boxes"], want["boxes"][0], rtol=1e-5, atol=1e-3)
    assert got["cross_attention"].shape[0] == num_queries
    # The threshold keeps a prefix of the same ranking.
    cut = float(want["scores"][0][3])
    some = predictor(image, cut, None, EVAL_CFG.eval_size, EVAL_CFG.max_size)
    np.testing.assert_array_equal(some["queries"], want["queries"][0][: len(some["queries"])])
    assert len(some["queries"]) >= 4


class _SigmoidHeads:
    class_activation = "sigmoid"  # as the Deformable DETR heads' ClassVar


class _SoftmaxHeads:  # DETR's heads declare nothing: softmax
    pass


class _FakeModel:
    """`apply` returns fixed outputs (`params` holds them), like a detector with these heads."""

    def __init__(self, heads):
        self.heads = heads

    def apply(self, variables, image, pixel_mask, train):
        assert train is False and image.shape[:3] == pixel_mask.shape
        return dict(variables["params"])


@pytest.mark.parametrize("heads,want", [(_SigmoidHeads(), postprocess_sigmoid),
                                        (_SoftmaxHeads(), postprocess)])
def test_predict_fn_picks_the_postprocessor_of_the_heads(heads, want):
    """Sigmoid heads: top-k over (query, class) pairs, so K may exceed Q; softmax: over Q."""
    rng = np.random.default_rng(0)
    num_layers, b, num_q, num_c = 2, 2, 6, 5
    logits = rng.normal(size=(num_layers, b, num_q, num_c)).astype(np.float32) * 2
    boxes = rng.uniform(0.2, 0.6, size=(num_layers, b, num_q, 4)).astype(np.float32)
    variables = {"params": {"pred_logits": logits, "pred_boxes": boxes}}
    batch = {"image": np.zeros((b, 8, 8, 3), np.float32), "pixel_mask": np.ones((b, 8, 8), bool),
             "orig_size": np.array([[40, 60], [80, 20]], np.int32)}
    model = _FakeModel(heads)
    predictions, outputs = jax.jit(make_predict_fn(model, top_k=20))(variables, batch)
    got = jax.device_get(predictions["bbox"])
    ref = jax.device_get(want(logits[-1], boxes[-1], batch["orig_size"], 20))
    assert set(got) == set(ref) == {"scores", "labels", "boxes", "queries"}
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, err_msg=k)
    sigmoid = isinstance(heads, _SigmoidHeads)
    assert class_activation(model) == ("sigmoid" if sigmoid else "softmax")
    assert got["scores"].shape == (b, 20 if sigmoid else num_q)
    np.testing.assert_array_equal(outputs["pred_logits"], logits)


def test_sigmoid_postprocessors_have_the_same_names():
    assert set(SIGMOID_POSTPROCESSORS) == set(POSTPROCESSORS) == {"bbox", "segm", "panoptic"}
    assert class_activation(object()) == "softmax"  # no heads at all
    with pytest.raises(ValueError, match="unknown postprocessors"):
        make_predict_fn(_FakeModel(_SigmoidHeads()), top_k=5, postprocessors=("segm_nope",))
