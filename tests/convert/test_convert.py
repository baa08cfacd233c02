"""Converters: key maps, their cross-check, clear errors, the CLI, and backbone-only parity."""

from __future__ import annotations

import argparse
import json
import logging
import os

import flax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import hf_reference as ref  # noqa: E402

from detr_jax.convert import (  # noqa: E402
    ConversionError,
    convert_state_dict,
    hf_to_facebook_state_dict,
    write_checkpoint,
)
from detr_jax.convert.__main__ import main as convert_main  # noqa: E402
from detr_jax.convert.detr import _hf_resnet_key_to_torchvision  # noqa: E402
from detr_jax.models.backbones.resnet import ResNet  # noqa: E402
from detr_jax.pretrained import load_params_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def hf_small():
    model = ref.build_hf_detr(ref.SMALL)
    return model, ref.state_dict_numpy(model)


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_facebook_layout_from_hf_converts_to_identical_params(hf_small):
    _, sd = hf_small
    fb = hf_to_facebook_state_dict(sd)
    assert "transformer.encoder.layers.0.self_attn.in_proj_weight" in fb
    assert "backbone.0.body.layer1.0.conv1.weight" in fb and "bbox_embed.layers.2.bias" in fb
    assert fb["transformer.decoder.layers.0.multihead_attn.in_proj_weight"].shape == (96, 32)
    p_hf, f_hf = convert_state_dict(sd, "hf")
    p_fb, f_fb = convert_state_dict(fb, "facebook")
    assert _equal(p_hf, p_fb) and f_hf == f_fb
    assert f_hf["model.backbone.name"] == "resnet18" and f_hf["num_classes"] == 5


def test_missing_and_unexpected_keys_are_listed(hf_small):
    _, sd = hf_small
    fb = hf_to_facebook_state_dict(sd)
    del fb["transformer.decoder.layers.1.linear2.bias"]
    fb["transformer.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError) as e:
        convert_state_dict(fb, "facebook")
    msg = str(e.value)
    assert "transformer.decoder.layers.1.linear2.bias" in msg and "transformer.extra.weight" in msg
    assert "1 missing and 1 unexpected" in msg


def test_cli_converts_hf_directory_and_facebook_pth(hf_small, tmp_path):
    model, sd = hf_small
    model.save_pretrained(tmp_path / "hf")
    assert convert_main(["--source=hf", str(tmp_path / "hf"), str(tmp_path / "out_hf")]) == 0
    params, _, meta = load_params_checkpoint(str(tmp_path / "out_hf"))
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    assert _equal(flat, convert_state_dict(sd, "hf")[0])
    assert meta["config_fields"]["model.transformer.nheads"] == 4  # from the HF config.json

    fb = {k: torch.from_numpy(v) for k, v in hf_to_facebook_state_dict(sd).items()}
    torch.save(
        {"model": fb, "args": argparse.Namespace(nheads=4, dilation=False)}, tmp_path / "d.pth"
    )
    assert convert_main(["--source=facebook", str(tmp_path / "d.pth"), str(tmp_path / "o")]) == 0
    params_fb, _, meta_fb = load_params_checkpoint(str(tmp_path / "o"))
    assert _equal(flax.traverse_util.flatten_dict(params_fb, sep="/"), flat)
    assert meta_fb["config_fields"] == meta["config_fields"]

    del fb["query_embed.weight"]
    torch.save({"model": fb}, tmp_path / "bad.pth")
    assert convert_main(["--source=facebook", str(tmp_path / "bad.pth"), str(tmp_path / "x")]) == 2


def test_resnet_backbone_only_hf_and_torchvision_layouts_match_hf_resnet():
    """HF ResNetForImageClassification (random, BN statistics randomised) vs our backbone C5."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(**ref.SMALL["resnet"], num_labels=3)
    net = ResNetForImageClassification(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    params, fields = convert_state_dict(sd, "hf_resnet")
    assert fields == {"model.backbone.name": "resnet18", "model.backbone.width": 8}

    # The same weights under torchvision names (plus its classifier, which is ignored).
    tv = {
        _hf_resnet_key_to_torchvision(k[len("resnet.") :]): v
        for k, v in sd.items()
        if k.startswith("resnet.")
    }
    tv.update({"fc.weight": np.zeros((3, 64), np.float32), "fc.bias": np.zeros(3, np.float32)})
    params_tv, _ = convert_state_dict(tv, "torchvision_resnet")
    assert _equal(params, params_tv)

    images = np.random.default_rng(0).normal(size=(2, 64, 96, 3)).astype(np.float32)
    with torch.no_grad():
        want = net.resnet(torch.from_numpy(images).permute(0, 3, 1, 2)).last_hidden_state
    backbone = ResNet(depth=18, width=8, norm="frozen_bn", mask_features=False)
    tree = flax.traverse_util.unflatten_dict(params, sep="/")["backbone"]
    got = backbone.apply({"params": tree}, images, np.ones((2, 64, 96), bool))["C5"].features
    diff = np.abs(np.asarray(got) - want.permute(0, 2, 3, 1).numpy()).max()
    print(f"backbone C5 max abs diff {diff:.2e} (max |C5| {float(want.abs().max()):.1f})")
    assert diff <= 1e-4 * max(1.0, float(want.abs().max())), diff


def test_transformers_4_key_names_convert_the_same(hf_small):
    """The hub's DETR checkpoints use the 4.x names (conv_encoder, out_proj, fc1)."""
    _, sd = hf_small
    old = {}
    for k, v in sd.items():
        k = k.replace("model.backbone.model.", "model.backbone.conv_encoder.model.")
        k = k.replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc")
        old[k] = v
    assert _equal(convert_state_dict(old, "hf")[0], convert_state_dict(sd, "hf")[0])


# What the converter wrote to meta.json for ref.SMALL before the fields were renamed (0.1).
OLD_META_SMALL = {
    "source": "hf",
    "backbone_only": False,
    "config_fields": {
        "num_classes": 5,
        "model.backbone": "resnet18",
        "model.backbone_width": 8,
        "model.hidden_dim": 32,
        "model.num_queries": 12,
        "model.enc_layers": 2,
        "model.dec_layers": 3,
        "model.dim_feedforward": 64,
        "model.pre_norm": False,
        "model.position_embedding": "sine",
        "model.nheads": 4,
        "model.dilation": False,
        "model.backbone_norm": "frozen_bn",
        "model.mask_backbone_features": False,
    },
}


def test_checkpoint_with_old_meta_json_names_works_for_init_from_and_predict(
    hf_small, tmp_path, caplog
):
    """A converted checkpoint whose meta.json has the old field names (model.backbone: a string,
    model.num_queries, ...) reads as the new names, for init_from and for detr_jax.predict."""
    import jax
    from PIL import Image

    from detr_jax import train, transfer
    from detr_jax.convert.checkpoint import config_for
    from detr_jax.models import build_model, variable_shapes
    from detr_jax.predict import run

    _, sd = hf_small
    params, fields = convert_state_dict(sd, "hf")
    ckpt = write_checkpoint(str(tmp_path / "ck"), params, fields, "hf", nheads=4)
    with open(os.path.join(ckpt, "meta.json")) as f:
        new_fields = json.load(f)["config_fields"]
    with open(os.path.join(ckpt, "meta.json"), "w") as f:
        json.dump(OLD_META_SMALL, f)

    loaded, _, meta = load_params_checkpoint(ckpt)
    assert meta["config_fields"] == new_fields  # translated through LEGACY_FIELDS
    assert meta["config_fields"]["model.backbone.name"] == "resnet18"
    assert meta["config_fields"]["model.queries.num_queries"] == 12
    config = config_for(OLD_META_SMALL["config_fields"])  # the old names also set the new ones
    assert config.to_dict() == config_for(new_fields).to_dict()
    assert config.model.backbone.name == "resnet18" and config.model.transformer.nheads == 4

    # --config.init_from: the train loop's init_from_checkpoint (on a zero state of the model
    # the config builds), without a config-differs warning.
    config.init_from, config.image_buckets = ckpt, [(64, 64)]
    shapes = variable_shapes(build_model(config), (64, 64))
    zeros = lambda tree: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)
    state = train.TrainState(step=0, params=zeros(shapes["params"]),
                             batch_stats=zeros(shapes.get("batch_stats", {})), opt_state=None,
                             rng=None)
    with caplog.at_level(logging.WARNING):
        state = transfer.init_from_checkpoint(config, state)
    assert "differs" not in caplog.text, caplog.text
    got = flax.traverse_util.flatten_dict(state.params, sep="/")
    assert _equal({k: np.asarray(v) for k, v in got.items()}, params)

    # detr_jax.predict on one image with the same checkpoint.
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "7.png")
    results = run(config, ckpt, [str(tmp_path / "7.png")], str(tmp_path / "out"),
                  score_threshold=0.0, max_attention_maps=1, min_size=0,
                  class_names=[f"c{i}" for i in range(5)])
    assert len(results) == 12 and {r["image_id"] for r in results} == {7}
