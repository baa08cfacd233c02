"""DINO's query selection against HF Deformable DETR's two-stage selection, where the two
coincide: the same encoder, proposal heads and top-k by the first class logit
(`select_by="first"`) give the same per-token proposals and the same selected anchors; DINO's
mixed selection then only replaces the content (learned instead of `pos_trans`)."""

from __future__ import annotations

import flax
import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_deformable_reference as ref  # noqa: E402
import torch  # noqa: E402
from hf_reference import random_batch  # noqa: E402
from test_deformable_parity import converted  # noqa: E402

from detr_jax.models import build_model  # noqa: E402
from detr_jax.models.transformers import DinoTransformer  # noqa: E402

TOL = 1e-4


@pytest.mark.slow  # builds and converts an HF model (~40 s on 2 cores)
def test_mixed_selection_picks_hf_two_stage_anchors():
    spec = ref.SMALL
    hf_model = ref.build_hf_deformable(spec, refine=True, two_stage=True)
    images, mask = random_batch([(120, 150), (90, 110)], (120, 150))
    with torch.no_grad():
        hf = hf_model.model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                            pixel_mask=torch.from_numpy(mask).long())
    config, _, variables = converted(spec, hf_model)
    m = config.model
    m.transformer.name = "dino"
    del m.transformer.box_refine, m.transformer.two_stage
    m.transformer.update(select_by="first", share_heads=False)  # HF's L + 1 head pairs
    m.queries = {"name": "dino", "num_queries": spec["num_queries"], "mixed": True,
                 "dn_number": 0}
    model = build_model(config)
    fresh = flax.traverse_util.flatten_dict(
        model.init(jax.random.PRNGKey(0), images[:1], mask[:1])["params"], sep="/")
    hf_params = flax.traverse_util.flatten_dict(variables["params"], sep="/")
    own = {k for k in fresh if k not in hf_params}
    assert own == {"tgt_embed"} | {k for k in fresh if k.startswith("transformer/ref_point_head")}
    params = {k: hf_params.get(k, v) for k, v in fresh.items()}

    out, state = jax.jit(lambda im, mk: model.apply(
        {"params": flax.traverse_util.unflatten_dict(params, sep="/")}, im, mk,
        capture_intermediates=lambda mdl, name: (isinstance(mdl, DinoTransformer)
                                               and name == "__call__"),
        mutable=["intermediates"]))(images, mask)
    decoded = state["intermediates"]["transformer"]["__call__"][0]
    anchors = np.asarray(decoded["references"][0])
    d_enc = np.abs(np.asarray(out["enc_outputs"]["pred_logits"])
                   - hf.enc_outputs_class.numpy()).max()
    d_anchor = np.abs(anchors - hf.init_reference_points.numpy()).max()
    print(f"enc logits diff {d_enc:.2e}, selected anchors diff {d_anchor:.2e}")
    assert d_enc <= TOL and d_anchor <= TOL
    assert anchors.shape == (2, spec["num_queries"], 4) and np.std(anchors) > 0.05
