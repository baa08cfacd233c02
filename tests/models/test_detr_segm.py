"""DETR's mask head as a part (models/heads/detr_mask.py): a detection checkpoint loads into it,
`freeze="detector"` trains exactly the mask head, bad widths and levels are named, bfloat16.
(Parity with HF DetrForSegmentation: test_detr_segm_parity.py.)"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config

from detr_jax import optim
from detr_jax.models import build_model, variable_shapes
from detr_jax.models.backbones.base import Feature
from detr_jax.models.heads.detr_mask import DetrSegmHeads
from detr_jax.transfer import merge_pretrained

HW = (64, 64)
SEGM = {"name": "detr_segm", "nheads": 8, "feature_levels": ("C2", "C3", "C4")}
MASK_PARAMS = ("bbox_attention/", "mask_head/")


def _segm_config(**overrides):
    return tiny_config(**{"model.heads": dict(SEGM), **overrides})


def _flat(tree):
    return flax.traverse_util.flatten_dict(tree, sep="/")


def _random_params(config, seed):
    """Random arrays shaped as the model's params (no init run: only the tree matters here)."""
    rng = np.random.default_rng(seed)
    shapes = variable_shapes(build_model(config), HW)["params"]
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def test_a_detection_checkpoint_loads_into_detr_segm_and_only_the_mask_head_is_new():
    det = _flat(variable_shapes(build_model(tiny_config()), HW)["params"])
    segm = _flat(variable_shapes(build_model(_segm_config()), HW)["params"])
    assert set(det) <= set(segm)
    assert {k: v.shape for k, v in det.items()} == {k: segm[k].shape for k in det}
    new = set(segm) - set(det)
    assert all(k.startswith(MASK_PARAMS) for k in new), sorted(new)
    assert {k.split("/")[0] for k in new} == {"bbox_attention", "mask_head"}
    # The transfer path loads every detection array and keeps the mask head as initialised.
    src, fresh = _random_params(tiny_config(), 1), _random_params(_segm_config(), 2)
    params, _, report = merge_pretrained(fresh, {}, src, {}, "all")
    assert sorted(report["kept"]) == sorted(new) and not report["ignored"]
    flat, src_flat, fresh_flat = _flat(params), _flat(src), _flat(fresh)
    for k in flat:
        want = fresh_flat[k] if k in new else src_flat[k]
        np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(want), err_msg=k)


@pytest.mark.slow  # 11 s loaded; test_segmentation_configs checks the freeze labels by default
def test_freeze_detector_trains_exactly_the_mask_head():
    """The original's recipe (DETRsegm(freeze_detr=True)): after one AdamW step with weight
    decay every parameter but `bbox_attention/*` and `mask_head/*` is unchanged."""
    config = _segm_config(freeze="detector", **{"optim.weight_decay": 1e-4})
    model = build_model(config)
    params = _random_params(config, 0)
    rules = optim.optimizer_rules(config, model, params)
    labels = _flat(optim.param_labels(params, rules))
    trained = {k for k, lab in labels.items() if lab != optim.FROZEN}
    assert trained == {k for k in labels if k.startswith(MASK_PARAMS)}
    tx, _ = optim.make_optimizer(config.optim, config.total_steps, params, rules)
    grads = jax.tree.map(lambda p: jnp.cos(p) + 2.0, params)
    step = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))
    new = _flat(step(params, grads))
    for k, p in _flat(params).items():
        changed = not np.array_equal(np.asarray(new[k]), np.asarray(p))
        assert changed == (k in trained), k


@pytest.mark.parametrize("heads, message", [
    ({**SEGM, "feature_levels": ("C3", "C4")}, r"model\.heads\.feature_levels=\('C3', 'C4'\)"),
    ({**SEGM, "nheads": 3}, r"model\.heads\.nheads=3 must divide model\.hidden_dim=32"),
    ({**SEGM, "nheads": 4}, r"model\.hidden_dim \+ model\.heads\.nheads = 36"),
    ({"name": "detr_segm", "nheads": 8}, r"levels \['C2', 'C3', 'C4'\] were not built"),
])
def test_bad_heads_configs_are_named(heads, message):
    model = build_model(tiny_config(**{"model.heads": heads}))
    with pytest.raises(ValueError, match=message):
        variable_shapes(model, HW)


def _head_inputs(b=2, q=6, d=32, h=4, w=5, seed=0):
    """Decoder and neck outputs for the heads alone: C5 map h x w (stride 32), C4..C2 below;
    image 1's right two C5 columns are padding."""
    rng = np.random.default_rng(seed)
    normal = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    mask = np.ones((b, h, w), bool)
    mask[1, :, -2:] = False
    feats = {f"C{i}": Feature(normal(b, h * 2 ** (5 - i), w * 2 ** (5 - i), 8 * 2 ** (i - 2)),
                              None, 2 ** i) for i in (2, 3, 4)}
    decoded = {"hs": normal(3, b, q, d), "memory": normal(b, h * w, d)}
    memory = {"tokens": normal(b, h * w, d), "mask": jnp.asarray(mask.reshape(b, -1)),
              "spatial_shapes": ((h, w),), "features": feats}
    return decoded, memory


@pytest.mark.slow  # 9 s on a loaded 2-core run (a second compile in bfloat16)
def test_bfloat16_compute_gives_float32_masks_close_to_float32():
    decoded, memory = _head_inputs()
    heads = {dt: DetrSegmHeads(num_classes=5, hidden_dim=32, nheads=8, dtype=dt)
             for dt in (jnp.float32, jnp.bfloat16)}
    init = jax.jit(lambda r: heads[jnp.float32].init(r, decoded, memory))
    variables = init(jax.random.PRNGKey(0))
    outs = {dt: jax.jit(lambda v, head=head: head.apply(v, decoded, memory))(variables)
            for dt, head in heads.items()}  # spatial_shapes and strides stay static
    f32, bf16 = (np.asarray(outs[dt]["pred_masks"]) for dt in (jnp.float32, jnp.bfloat16))
    assert f32.shape == bf16.shape == (1, 2, 6, 32, 40) and bf16.dtype == np.float32
    assert outs[jnp.bfloat16]["pred_logits"].dtype == np.float32
    assert np.isfinite(bf16).all() and f32.std() > 0.1
    err = np.abs(bf16 - f32).max() / np.abs(f32).max()
    print(f"bfloat16 vs float32 masks: max |diff| / max |f32| = {err:.3f}")
    assert err < 0.1


def test_init_from_warns_only_when_the_heads_config_really_differs(monkeypatch):
    """A converted DETRsegm checkpoint's meta.json holds `model.heads` as a dict with a list;
    the same heads in a config (ConfigDict, tuple) are no difference."""
    from detr_jax import transfer

    warnings = []
    monkeypatch.setattr(transfer.logging, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    meta = {"config_fields": {"model.heads": {**SEGM, "feature_levels": ["C2", "C3", "C4"]}}}
    transfer._warn_config_differences(_segm_config(), meta)
    assert warnings == []
    transfer._warn_config_differences(_segm_config(**{"model.heads": {**SEGM, "nheads": 4}}), meta)
    assert len(warnings) == 1 and "model.heads" in warnings[0]
