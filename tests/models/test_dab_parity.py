"""DAB-DETR: the anchor queries by hand, and parity with Hugging Face `DabDetrForObjectDetection`
(random weights, offline) layer by layer: encoder memory, every decoder layer's normed hidden
states and anchor boxes, and every layer's logits and boxes, at two image sizes with padding."""

from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detr_jax.models.queries import AnchorQueries

TOL = 1e-4


# ---- the queries part, by hand ----------------------------------------------------------------


def _logit(p):
    return math.log(p / (1 - p))


ANCHORS = np.array([[0.0, 0.0, 0.0, 0.0],
                    [_logit(0.75), _logit(0.25), _logit(0.5), _logit(0.2)],
                    [_logit(0.1), _logit(0.9), _logit(0.3), _logit(0.6)]], np.float32)
BOXES = np.array([[0.5, 0.5, 0.5, 0.5], [0.75, 0.25, 0.5, 0.2], [0.1, 0.9, 0.3, 0.6]])


def test_anchor_queries_are_the_sigmoid_of_their_embedding():
    gen = AnchorQueries(hidden_dim=8, num_queries=3)
    params = {"refpoint_embed": jnp.asarray(ANCHORS)}
    out = gen.apply({"params": params}, 2)
    assert out["reference_points"].shape == (2, 3, 4)
    np.testing.assert_allclose(out["reference_points"], np.stack([BOXES, BOXES]), atol=1e-6)
    assert out["query_pos"] is None and out["tgt"] is None and out["self_attn_mask"] is None
    assert out["num_groups"] == 1
    shapes = jax.tree.map(jnp.shape, gen.init(jax.random.PRNGKey(0), 1)["params"])
    assert shapes == {"refpoint_embed": (3, 4)}


def test_anchor_patterns_are_pattern_major():
    gen = AnchorQueries(hidden_dim=2, num_queries=3, num_patterns=2)
    patterns = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    out = gen.apply({"params": {"refpoint_embed": ANCHORS, "patterns": patterns}}, 1)
    # Query p * Q + q: pattern p as content, anchor q as box.
    np.testing.assert_allclose(out["reference_points"][0], np.concatenate([BOXES, BOXES]),
                               atol=1e-6)
    np.testing.assert_array_equal(out["tgt"][0], np.repeat(patterns, 3, axis=0))


def test_anchor_groups_in_training_only():
    gen = AnchorQueries(hidden_dim=8, num_queries=3, num_groups=2)
    extra = ANCHORS[::-1].copy()
    variables = {"params": {"refpoint_embed": ANCHORS, "group_refpoint_embed": extra}}
    train = gen.apply(variables, 1, train=True)
    np.testing.assert_allclose(train["reference_points"][0],
                               np.concatenate([BOXES, BOXES[::-1]]), atol=1e-6)
    assert train["num_groups"] == 2
    block = np.kron(np.eye(2, dtype=bool), np.ones((3, 3), bool))
    np.testing.assert_array_equal(train["self_attn_mask"][0], block)
    infer = gen.apply(variables, 1, train=False)
    assert infer["reference_points"].shape == (1, 3, 4) and infer["self_attn_mask"] is None
    assert infer["num_groups"] == 1


def test_random_xy_init_and_frozen_centres():
    gen = AnchorQueries(hidden_dim=8, num_queries=500, random_xy=True, freeze_xy=True)
    params = gen.init(jax.random.PRNGKey(0), 1)["params"]
    centres = jax.nn.sigmoid(params["refpoint_embed"][:, :2])
    assert 0.45 < float(centres.mean()) < 0.55 and float(centres.std()) > 0.25  # ~U(0, 1)
    grad = jax.grad(lambda p: gen.apply({"params": p}, 2)["reference_points"].sum())(params)
    g = np.asarray(grad["refpoint_embed"])
    assert np.all(g[:, :2] == 0) and np.all(g[:, 2:] != 0)


# ---- parity with Hugging Face ------------------------------------------------------------------


# HF config variants: DAB-DETR's defaults, and the options off the default path (pattern
# embeddings as content, the positional query in every cross-attention, the encoder's final
# norm of `normalize_before`).
VARIANTS = {"default": {},
            "options": {"num_patterns": 2, "keep_query_pos": True, "normalize_before": True}}
_BUILT: dict[str, tuple] = {}


def converted(variant: str):
    """(reference module, HF model, our config, jitted apply returning the outputs and the
    transformer's own outputs) for an HF variant, built once per test session."""
    if variant in _BUILT:
        return _BUILT[variant]
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import hf_dab_reference as ref

    from detr_jax.convert import convert_state_dict
    from detr_jax.convert.checkpoint import check_against_model, config_for
    from detr_jax.models import build_model
    from detr_jax.models.transformers import DabTransformer

    spec = ref.SMALL
    hf_model = ref.build_hf_dab(spec, **VARIANTS[variant])
    hints = {"model_type": "dab-detr", "nheads": spec["heads"], "temperature_height": 20,
             "temperature_width": 20}
    params, fields = convert_state_dict(ref.state_dict_numpy(hf_model), "hf", hints)
    config = config_for({**fields, "model.backbone.mask_features": False})
    check_against_model(params, config, backbone_only=False)  # exactly the model's params
    model = build_model(config)
    variables = {"params": flax.traverse_util.unflatten_dict(params, sep="/")}

    def run(im, m):
        out, state = model.apply(variables, im, m, mutable=["intermediates"],
                                 capture_intermediates=lambda mdl, _: isinstance(
                                     mdl, DabTransformer))
        return out, state["intermediates"]["transformer"]["__call__"][0]

    _BUILT[variant] = (ref, hf_model, config, jax.jit(run))
    return _BUILT[variant]


# (canvas, real sizes): the second image of each batch is padded at the bottom / right.
BATCHES = {"landscape": ((128, 160), [(128, 160), (100, 115)]),
           "portrait": ((192, 128), [(192, 128), (150, 70)])}
CASES = [("default", "landscape"), ("default", "portrait"), ("options", "landscape")]


@pytest.mark.parametrize("variant,batch", CASES)
def test_dab_matches_hf_every_layer(variant, batch):
    from hf_reference import random_batch

    ref, hf_model, config, run = converted(variant)
    canvas, sizes = BATCHES[batch]
    images, mask = random_batch(sizes, canvas, seed=len(batch))
    theirs = ref.hf_forward(hf_model, images, mask)
    out, decoded = run(images, mask)
    t, q = config.model.transformer, config.model.queries
    assert (t.name, t.enc_layers, t.dec_layers, t.activation) == ("dab", 2, 2, "prelu")
    assert config.model.neck.temperature == 20 and q.num_queries == 8
    options = variant == "options"
    assert (t.keep_query_pos, t.pre_norm, q.num_patterns) == (options, options, 2 * options)

    def diff(ours, key, axis=None):
        a, b = np.asarray(ours), theirs[key]
        assert a.shape == b.shape, (key, a.shape, b.shape)
        return np.abs(a - b).max(axis=axis)

    per_layer = (1, 2, 3)
    d = {"encoder": diff(decoded["memory"], "encoder"),
         "hs": diff(decoded["hs"], "hs", per_layer),
         "references": diff(jnp.stack(decoded["references"]), "references", per_layer),
         "logits": diff(out["pred_logits"], "logits", per_layer),
         "boxes": diff(out["pred_boxes"], "boxes", per_layer)}
    print(f"{variant}/{batch}: max |ours - HF|: " + ", ".join(
        f"{k} " + " ".join(f"{x:.1e}" for x in np.atleast_1d(v)) for k, v in d.items()))
    for k, v in d.items():
        assert np.max(v) <= TOL, (k, v)
    # HF's own forward gives the last layer's.
    assert np.abs(np.asarray(out["pred_logits"][-1]) - theirs["final_logits"]).max() <= TOL
    assert np.abs(np.asarray(out["pred_boxes"][-1]) - theirs["final_boxes"]).max() <= TOL
    # The anchors move from layer to layer and the boxes spread (not a test of constants).
    refs = theirs["references"]
    assert np.all(np.abs(refs[1:] - refs[:-1]).max(axis=(1, 2, 3)) > 0.05)
    assert np.std(refs[0]) > 0.1 and np.std(theirs["boxes"][-1]) > 0.05
