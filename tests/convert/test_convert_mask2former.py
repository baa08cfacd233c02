"""Mask2Former converter: an HF save_pretrained directory through the CLI (the heads count from
config.json, the fields the weights imply), and missing keys named."""

from __future__ import annotations

import flax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_mask2former_reference as ref  # noqa: E402

from detr_jax.convert import ConversionError, convert_state_dict  # noqa: E402
from detr_jax.convert.__main__ import main as convert_main  # noqa: E402
from detr_jax.pretrained import load_params_checkpoint  # noqa: E402

SPEC = ref.SMALL


def test_hf_directory_through_the_cli(tmp_path):
    hf_model = ref.build_hf_mask2former(SPEC)
    hf_model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted"
    assert convert_main(["--source=hf", str(tmp_path / "hf"), str(out)]) == 0
    params, _, meta = load_params_checkpoint(str(out))
    fields = meta["config_fields"]
    assert fields["num_classes"] == SPEC["num_labels"]
    assert fields["model.hidden_dim"] == SPEC["hidden"]
    assert fields["model.backbone.name"] == "resnet18" and fields["model.backbone.width"] == 8
    neck, t = fields["model.neck"], fields["model.transformer"]
    assert neck["levels"] == ["C2", "C3", "C4", "C5"] and neck["encoder_levels"] == 3
    assert (neck["nheads"], neck["enc_points"], neck["enc_layers"], neck["mask_dim"],
            neck["dim_feedforward"]) == (SPEC["heads"], 4, SPEC["encoder_layers"],
                                         SPEC["mask_dim"], SPEC["encoder_ffn"])
    assert (t["name"], t["nheads"], t["dec_layers"], t["dim_feedforward"]) == (
        "mask2former", SPEC["heads"], SPEC["decoder_layers"], SPEC["ffn"])
    assert fields["model.queries"]["num_queries"] == SPEC["num_queries"]
    assert fields["model.queries"]["with_content"] is True
    # The written params are the state_dict's: spot checks by the HF names.
    sd = ref.state_dict_numpy(hf_model)
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    np.testing.assert_array_equal(
        flat["query_embed"],
        np.concatenate([sd["model.transformer_module.queries_embedder.weight"],
                        sd["model.transformer_module.queries_features.weight"]], 1))
    np.testing.assert_array_equal(
        flat["transformer/decoder_layers_1/cross_attn/k_proj/kernel"],
        np.split(sd["model.transformer_module.decoder.layers.1.cross_attn.in_proj_weight"],
                 3)[1].T)
    np.testing.assert_array_equal(
        flat["pixel_decoder/input_proj_0/conv/kernel"][0, 0],  # C5's projection comes first
        sd["model.pixel_level_module.decoder.input_projections.0.0.weight"][:, :, 0, 0].T)
    assert flat["pixel_decoder/input_proj_0/conv/kernel"].shape[2] == 64  # C5's channels


def test_missing_key_is_named():
    sd = ref.state_dict_numpy(ref.build_hf_mask2former(SPEC))
    del sd["model.pixel_level_module.decoder.adapter_1.1.bias"]
    with pytest.raises(ConversionError, match=r"adapter_1\.1\.bias"):
        convert_state_dict(sd, "hf", {"nheads": SPEC["heads"]})
