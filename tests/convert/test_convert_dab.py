"""DAB-DETR converter: an HF save_pretrained directory through the CLI (model type, heads and
temperatures from config.json, one key of the tied box heads), detection from the keys, and
the errors it names."""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_dab_reference as ref  # noqa: E402
from hf_reference import random_batch  # noqa: E402

from detr_jax.convert import ConversionError, convert_state_dict  # noqa: E402
from detr_jax.convert.__main__ import main as convert_main  # noqa: E402
from detr_jax.convert.checkpoint import config_for  # noqa: E402
from detr_jax.inference import load_for_inference, make_predict_fn  # noqa: E402
from detr_jax.pretrained import load_params_checkpoint  # noqa: E402

HINTS = {"nheads": ref.SMALL["heads"]}


@pytest.fixture(scope="module")
def hf_model():
    return ref.build_hf_dab(ref.SMALL)


def test_hf_directory_through_the_cli(tmp_path, hf_model):
    hf_model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted"
    assert convert_main(["--source=hf", str(tmp_path / "hf"), str(out)]) == 0
    _, _, meta = load_params_checkpoint(str(out))
    fields = meta["config_fields"]
    assert fields["model.transformer"]["name"] == "dab"
    assert fields["model.transformer"]["nheads"] == ref.SMALL["heads"]
    assert fields["model.neck"]["temperature"] == 20
    config = config_for(fields)
    model, variables = load_for_inference(config, str(out))
    images, mask = random_batch([(128, 160), (90, 120)], (128, 160), seed=3)
    batch = {"image": images, "pixel_mask": mask, "orig_size": np.array([[128, 160], [90, 120]])}
    predictions, outputs = jax.jit(make_predict_fn(model, top_k=10))(variables, batch)
    theirs = ref.hf_forward(hf_model, images, mask)
    assert np.abs(np.asarray(outputs["pred_logits"]) - theirs["logits"]).max() <= 1e-4
    assert np.abs(np.asarray(outputs["pred_boxes"]) - theirs["boxes"]).max() <= 1e-4
    assert predictions["bbox"]["scores"].shape == (2, 10)  # sigmoid top-k over (query, class)


def test_detected_from_the_keys_and_errors_named(hf_model):
    sd = ref.state_dict_numpy(hf_model)
    params, fields = convert_state_dict(sd, "hf", HINTS)  # no model_type: told by the keys
    assert fields["model.queries"] == {"name": "anchors", "num_queries": 8, "num_patterns": 0}
    assert params["transformer/decoder_layers_0/ffn/activation/negative_slope"].shape == ()
    missing = dict(sd)
    del missing["model.decoder.layers.1.cross_attn.cross_attn_query_pos_sine_proj.bias"]
    with pytest.raises(ConversionError, match=r"layers\.1\.cross_attn\.cross_attn_query_pos_sine"):
        convert_state_dict(missing, "hf", HINTS)
    untied = dict(sd)
    untied["model.decoder.bbox_embed.layers.2.bias"] = sd["bbox_predictor.layers.2.bias"] + 1
    with pytest.raises(ConversionError, match="tied"):
        convert_state_dict(untied, "hf", HINTS)
    with pytest.raises(ConversionError, match="one temperature"):
        convert_state_dict(sd, "hf", {**HINTS, "temperature_width": 10})
