"""Deformable DETR converters: HF (a state_dict or a save_pretrained directory through the CLI)
and the fundamentalvision/Deformable-DETR layout, cross-checked against each other."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_deformable_reference as ref  # noqa: E402
from hf_reference import random_batch  # noqa: E402

from detr_jax.convert import ConversionError, convert_state_dict  # noqa: E402
from detr_jax.convert.__main__ import main as convert_main  # noqa: E402
from detr_jax.convert.checkpoint import config_for  # noqa: E402
from detr_jax.convert.detr import _hf_resnet_key_to_torchvision  # noqa: E402
from detr_jax.inference import load_for_inference, make_predict_fn  # noqa: E402
from detr_jax.pretrained import load_params_checkpoint  # noqa: E402

VARIANTS = {"plain": (False, False), "refine": (True, False), "two_stage": (True, True)}
HINTS = {"nheads": ref.SMALL["heads"], "num_queries": ref.SMALL["num_queries"]}

# HF name -> fundamentalvision name, written from the original's module names (models/
# deformable_transformer.py, deformable_detr.py), not from the converter's tables.
_E, _D = r"transformer.encoder.layers.", r"transformer.decoder.layers."
_RENAMES = (
    (r"^model\.input_proj\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.(level_embed|reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)"
     r"(\.|$)", r"transformer.\1\2"),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn\.", _E + r"\1.self_attn."),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.", _E + r"\1.norm1."),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", _E + r"\1.norm2."),
    (r"^model\.(en|de)coder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.\1coder.layers.\2.linear1."),
    (r"^model\.(en|de)coder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.\1coder.layers.\2.linear2."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.o_proj\.", _D + r"\1.self_attn.out_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.", _D + r"\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", _D + r"\1.cross_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", _D + r"\1.norm1."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", _D + r"\1.norm3."),
    (r"^model\.decoder\.(bbox_embed|class_embed)\.", r"transformer.decoder.\1."),
    (r"^(class_embed|bbox_embed)\.", r"\1."),
)


def to_original_layout(sd: dict) -> dict:
    """An HF Deformable DETR state_dict in the fundamentalvision layout (torchvision backbone
    names under backbone.0.body, nn.MultiheadAttention's packed q/k/v)."""
    out, packed = {}, {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith("model.backbone.model."):
            name = _hf_resnet_key_to_torchvision(k[len("model.backbone.model."):])
            out["backbone.0.body." + name] = v
            continue
        m = re.match(r"^model\.decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            base = f"transformer.decoder.layers.{m.group(1)}.self_attn.in_proj_{m.group(3)}"
            packed.setdefault(base, {})[m.group(2)] = v
            continue
        for pattern, repl in _RENAMES:
            if re.match(pattern, k):
                out[re.sub(pattern, repl, k)] = v
                break
        else:
            raise AssertionError(f"no original name for {k}")
    for base, parts in packed.items():
        out[base] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_original_layout_gives_the_same_params(variant):
    hf_model = ref.build_hf_deformable(ref.SMALL, *VARIANTS[variant])
    sd = ref.state_dict_numpy(hf_model)
    from_hf, hf_fields = convert_state_dict(sd, "hf", HINTS)
    from_original, fields = convert_state_dict(to_original_layout(sd), "deformable", HINTS)
    assert sorted(from_hf) == sorted(from_original)
    assert all(np.array_equal(from_hf[k], from_original[k]) for k in from_hf)
    assert fields == hf_fields
    t = fields["model.transformer"]
    assert (t["box_refine"], t["two_stage"]) == VARIANTS[variant]
    assert (t["enc_points"], t["dec_points"]) == (ref.SMALL["enc_points"], ref.SMALL["dec_points"])
    assert fields["model.neck"]["levels"] == ["C3", "C4", "C5"]
    assert fields["model.neck"]["extra_levels"] == 1


def test_missing_key_is_named():
    sd = ref.state_dict_numpy(ref.build_hf_deformable(ref.SMALL, False, False))
    del sd["model.decoder.layers.1.encoder_attn.sampling_offsets.bias"]
    with pytest.raises(ConversionError, match=r"layers\.1\.encoder_attn\.sampling_offsets"):
        convert_state_dict(sd, "hf", HINTS)


@pytest.mark.parametrize("variant", ["refine", "two_stage"])
def test_hf_directory_through_the_cli(tmp_path, variant):
    """save_pretrained keeps one key per tied group; the CLI reads the model type and the
    two-stage proposals from config.json, and the checkpoint predicts as HF does."""
    hf_model = ref.build_hf_deformable(ref.SMALL, *VARIANTS[variant])
    hf_model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted"
    assert convert_main(["--source=hf", str(tmp_path / "hf"), str(out)]) == 0
    _, _, meta = load_params_checkpoint(str(out))
    config = config_for(meta["config_fields"])
    model, variables = load_for_inference(config, str(out))
    images, mask = random_batch([(120, 150), (80, 100)], (120, 150), seed=3)
    batch = {"image": images, "pixel_mask": mask, "orig_size": np.array([[120, 150], [80, 100]])}
    predictions, outputs = jax.jit(make_predict_fn(model, top_k=10))(variables, batch)
    theirs = ref.hf_forward(hf_model, images, mask)
    assert np.abs(np.asarray(outputs["pred_logits"]) - theirs["logits"]).max() <= 1e-4
    assert np.abs(np.asarray(outputs["pred_boxes"]) - theirs["boxes"]).max() <= 1e-4
    assert predictions["bbox"]["scores"].shape == (2, 10)
