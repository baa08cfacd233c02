"""MaskFormer converter: an HF save_pretrained directory through the CLI (config.json's nested
decoder heads read), missing keys named, Swin and stride-in-1x1 backbones refused."""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_maskformer_reference as ref  # noqa: E402
from hf_reference import random_batch  # noqa: E402

from detr_jax.convert import ConversionError, convert_state_dict  # noqa: E402
from detr_jax.convert.__main__ import main as convert_main  # noqa: E402
from detr_jax.convert.checkpoint import config_for  # noqa: E402
from detr_jax.inference import load_for_inference, make_predict_fn  # noqa: E402
from detr_jax.pretrained import load_params_checkpoint  # noqa: E402


@pytest.mark.slow  # 9 s on a loaded 2-core run; the parity tests cover the path
def test_hf_directory_through_the_cli(tmp_path):
    """The CLI reads model_type and the decoder's heads (4, not the default 8) from
    config.json; the checkpoint's model predicts HF's logits and masks."""
    hf_model = ref.build_hf_maskformer(ref.SMALL)
    hf_model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted"
    assert convert_main(["--source=hf", str(tmp_path / "hf"), str(out)]) == 0
    _, _, meta = load_params_checkpoint(str(out))
    fields = meta["config_fields"]
    assert fields["model.transformer"]["nheads"] == ref.SMALL["heads"]
    assert fields["model.neck"]["name"] == "maskformer_fpn"
    assert fields["num_classes"] == ref.SMALL["num_labels"]
    model, variables = load_for_inference(config_for(fields), str(out))
    images, mask = random_batch([(96, 128), (64, 100)], (96, 128), seed=3)
    batch = {"image": images, "pixel_mask": mask, "orig_size": np.array([[96, 128], [64, 100]])}
    predictions, outputs = jax.jit(make_predict_fn(model, top_k=10))(variables, batch)
    theirs = ref.hf_forward_all_layers(hf_model, images, mask)
    assert np.abs(np.asarray(outputs["pred_logits"]) - theirs["logits"]).max() <= 1e-4
    assert np.abs(np.asarray(outputs["pred_masks"]) - theirs["masks"]).max() <= 1e-4
    assert predictions["bbox"]["boxes"].shape == (2, 10, 4)


def test_missing_key_is_named():
    sd = ref.state_dict_numpy(ref.build_hf_maskformer(ref.SMALL))
    del sd["model.pixel_level_module.decoder.fpn.layers.1.proj.1.bias"]
    with pytest.raises(ConversionError, match=r"fpn\.layers\.1\.proj\.1\.bias"):
        convert_state_dict(sd, "hf")


def test_stride_in_1x1_backbone_is_refused():
    sd = ref.state_dict_numpy(ref.build_hf_maskformer(ref.SMALL))
    with pytest.raises(ConversionError, match="downsample_in_bottleneck"):
        convert_state_dict(sd, "hf", {"model_type": "maskformer",
                                      "downsample_in_bottleneck": True})


def test_swin_backbone_is_refused():
    from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation
    from transformers.models.maskformer.configuration_maskformer_swin import (
        MaskFormerSwinConfig,
    )

    swin = MaskFormerSwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1],
                                num_heads=[1, 1, 1, 1], window_size=2,
                                out_features=["stage1", "stage2", "stage3", "stage4"])
    decoder = DetrConfig(d_model=32, decoder_layers=1, encoder_layers=0,
                         decoder_attention_heads=2, decoder_ffn_dim=32, num_queries=4,
                         use_timm_backbone=False)
    config = MaskFormerConfig(backbone_config=swin, decoder_config=decoder,
                              fpn_feature_size=32, mask_feature_size=32, num_labels=3)
    sd = ref.state_dict_numpy(MaskFormerForInstanceSegmentation(config))
    with pytest.raises(ConversionError, match="Swin backbone"):
        convert_state_dict(sd, "hf")
