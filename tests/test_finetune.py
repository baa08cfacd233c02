"""End to end: a converted HF DETR fine-tunes on shapes with a new class count (slow)."""

from __future__ import annotations

import json
import os

import pytest
from conftest import tiny_config

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.slow
def test_converted_hf_checkpoint_finetunes_on_shapes_with_new_classes(tmp_path):
    import hf_reference as ref

    from detr_jax import train
    from detr_jax.convert import convert_state_dict, write_checkpoint

    hf = ref.build_hf_detr(ref.SMALL)  # 5 classes; shapes has 6
    params, fields = convert_state_dict(ref.state_dict_numpy(hf), "hf")
    ckpt = write_checkpoint(str(tmp_path / "hf_ckpt"), params, fields, "hf", nheads=4)
    meta = json.load(open(os.path.join(ckpt, "meta.json")))
    overrides = {k: v for k, v in meta["config_fields"].items() if k != "num_classes"}
    config = tiny_config(**overrides, init_from=ckpt, freeze_backbone_steps=10)
    config.total_steps, config.log_every, config.checkpoint_every = 60, 20, 60
    config.optim.lr, config.optim.param_rules = 1e-3, [("^backbone/", 0.1)]
    config.model.transformer.dropout = 0.0
    train.train_and_evaluate(config, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["loss"] for r in rows if "loss" in r]
    print("fine-tune losses per 20 steps:", losses)
    assert len(losses) == 3 and losses[-1] < losses[0]
