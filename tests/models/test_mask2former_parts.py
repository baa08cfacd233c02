"""Mask2Former's parts by name: config errors naming the field, the masked-attention mask by
hand, and a training-mode forward on padded images (shapes, gradients into every part, boxes
of the masks relative to each real image)."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_mask2former_config import tiny_mask2former

from detr_jax.config_validation import validate_config
from detr_jax.models import PartConfigError, build_model, model_problems
from detr_jax.models.transformers.mask2former import masked_attention_mask


def test_bad_fields_and_mismatched_parts_are_start_up_errors_naming_them():
    c = tiny_mask2former()
    assert model_problems(c) == []
    validate_config(c, 1)  # the tiny config itself is valid
    c.model.neck.encoder_levels = 5
    with pytest.raises(ValueError, match=r"model\.neck\.encoder_levels=5"):
        build_model(c)
    c = tiny_mask2former()
    c.model.neck.num_groups = 5
    with pytest.raises(ValueError, match=r"model\.neck\.num_groups=5"):
        build_model(c)
    c = tiny_mask2former()
    c.model.neck = {"name": "multi_scale", "levels": ("C3", "C4", "C5"), "extra_levels": 1,
                    "num_groups": 8}
    with pytest.raises(PartConfigError, match="mask2former_pixel_decoder"):
        build_model(c)
    c = tiny_mask2former()
    c.model.queries.with_content = False
    with pytest.raises(PartConfigError, match="with_content=True"):
        build_model(c)
    c = tiny_mask2former(**{"model.transformer.attention_impl": "flash"})
    with pytest.raises(ValueError, match=r"model\.transformer\.attention_impl='flash'"):
        build_model(c)


def test_masked_attention_mask_by_hand():
    # 1 image, 2 queries, 2 x 4 mask logits; the level is 1 x 2 (each output position averages
    # a 2 x 2 block, as bilinear halving at align_corners=False reads the block's centre).
    logits = np.zeros((1, 2, 2, 4), np.float32)
    logits[0, 0] = [[3, 1, -1, -3], [3, 1, -1, -3]]  # left on, right off
    logits[0, 1] = -5.0  # empty: unblocked everywhere
    allowed = np.asarray(masked_attention_mask(jnp.asarray(logits), (1, 2)))
    np.testing.assert_array_equal(allowed, [[[True, False], [True, True]]])


@pytest.mark.slow  # 35-55 s on the shared 2-core CPU (init + a training-mode gradient compile)
def test_forward_train_on_padded_images_gradients_and_boxes():
    c = tiny_mask2former()
    model = build_model(c)
    images = np.random.default_rng(0).normal(size=(2, 64, 80, 3)).astype(np.float32)
    mask = np.zeros((2, 64, 80), bool)
    mask[0] = True
    mask[1, :40, :50] = True
    images[1][~mask[1]] = 0.0
    variables = jax.jit(lambda r: model.init({"params": r}, images, mask))(jax.random.PRNGKey(0))

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, images, mask, train=True,
                             rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"])
        return jnp.sum(out["pred_logits"] ** 2) + jnp.mean(out["pred_masks"] ** 2), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    n, q = c.model.transformer.dec_layers + 1, c.model.queries.num_queries
    assert out["pred_logits"].shape == (n, 2, q, c.num_classes + 1)
    assert out["pred_masks"].shape == (n, 2, q, 16, 20)  # stride 4
    assert out["pred_boxes"].shape == (n, 2, q, 4)
    flat = flax.traverse_util.flatten_dict(grads, sep="/")
    for prefix in ("backbone/", "pixel_decoder/encoder_layers_0/", "pixel_decoder/adapter_1/",
                   "pixel_decoder/mask_projection/", "transformer/decoder_layers_1/cross_attn/",
                   "transformer/level_embed", "query_embed", "mask_embed/", "class_embed/"):
        g = [np.abs(np.asarray(v)).max() for k, v in flat.items() if k.startswith(prefix)]
        assert g and max(g) > 0 and all(np.isfinite(g)), prefix
    # Boxes: the tight box of each mask's positive cells inside the real image, relative to it.
    masks, boxes = np.asarray(out["pred_masks"]) > 0, np.asarray(out["pred_boxes"])
    for b, (h, w) in enumerate([(64, 80), (40, 50)]):
        for layer in range(n):
            for i in range(q):
                cells = masks[layer, b, i, : -(-h // 4), : -(-w // 4)]
                if not cells.any():
                    np.testing.assert_array_equal(boxes[layer, b, i], 0.0)
                    continue
                ys, xs = np.nonzero(cells)
                x0, x1 = 4 * xs.min(), min(4 * xs.max() + 4, w)
                y0, y1 = 4 * ys.min(), min(4 * ys.max() + 4, h)
                want = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
                np.testing.assert_allclose(boxes[layer, b, i], want, rtol=1e-5)


@pytest.mark.slow  # three eager applies of the model: 26 s on the shared 2-core CPU
def test_masked_attention_off_equals_masks_that_block_nothing(monkeypatch):
    """`masked_attention=False` is plain cross-attention: the same outputs as the masked decoder
    whose masks let every query see every position, and not those of the real masks."""
    import detr_jax.models.transformers.mask2former as m2f

    on, off = tiny_mask2former(), tiny_mask2former()
    off.model.transformer.masked_attention = False
    model_on, model_off = build_model(on), build_model(off)
    images = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
    pixel_mask = jnp.ones((2, 64, 64), bool)
    variables = model_on.init(jax.random.PRNGKey(0), images, pixel_mask)
    plain = model_off.apply(variables, images, pixel_mask)["pred_masks"]
    masked = model_on.apply(variables, images, pixel_mask)["pred_masks"]
    monkeypatch.setattr(m2f, "masked_attention_mask",
                        lambda logits, size: jnp.ones(logits.shape[:2] + (size[0] * size[1],),
                                                      bool))
    open_masks = model_on.apply(variables, images, pixel_mask)["pred_masks"]
    np.testing.assert_allclose(np.asarray(plain), np.asarray(open_masks), atol=1e-5)
    assert np.abs(np.asarray(masked) - np.asarray(plain))[1:].max() > 1e-3
