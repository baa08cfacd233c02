"""Start-up config checks (one line per bad field, naming it and what is allowed), signal flags."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import tiny_config

from detr_jax.config_validation import ConfigError, validate_config
from detr_jax.core.preemption import StopSignal


def _error_lines(config, num_devices: int = 1, workdir: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        validate_config(config, num_devices, workdir=workdir)
    return str(e.value).splitlines()[1:]


def _one_error(config, **kwargs) -> str:
    lines = _error_lines(config, **kwargs)
    assert len(lines) == 1, lines
    return lines[0].strip()


def test_tiny_config_is_valid(tmp_path):
    validate_config(tiny_config(), 1, workdir=str(tmp_path / "new" / "dir"))
    assert os.path.isdir(tmp_path / "new" / "dir")
    assert os.listdir(tmp_path / "new" / "dir") == []  # the write probe is removed


@pytest.mark.parametrize(
    "overrides, field, allowed",
    [
        ({"model.queries.num_queries": 8, "max_boxes": 8}, "model.queries.num_queries=8",
         "max_boxes=8"),
        ({"matcher.name": "munkres"}, "matcher.name='munkres'", "hungarian_scipy"),
        ({"model.backbone.name": "vgg16"}, "model.backbone.name='vgg16'", "resnet50"),
        ({"model.backbone.norm": "ln"}, "model.backbone.norm='ln'", "frozen_bn"),
        ({"model.backbone.conv_weight_grad": "fft"}, "model.backbone.conv_weight_grad='fft'",
         "gemm"),
        ({"model.backbone.frozen_stages": 6}, "model.backbone.frozen_stages=6", "(0, 1, 2"),
        ({"model.neck.level": "C6"}, "model.neck.level='C6'", "C5"),
        ({"model.neck.position_embedding": "rope"}, "model.neck.position_embedding='rope'",
         "sine"),
        ({"model.transformer.attention_impl": "flash"},
         "model.transformer.attention_impl='flash'", "dot_product"),
        ({"model.transformer.nheads": 5}, "model.hidden_dim=32", "model.transformer.nheads=5"),
        ({"model.transformer.dropout": 1.0}, "model.transformer.dropout=1.0", "[0, 1)"),
        ({"model.queries.num_groups": 0}, "model.queries.num_groups=0", ">= 1"),
        ({"model.dtype": "float16"}, "model.dtype='float16'", "bfloat16"),
        ({"loss.terms.labels.label_smoothing": 1.0}, "loss.terms.labels.label_smoothing=1.0",
         "[0, 1)"),
        ({"loss.terms.labels": {"eos_coeff": 0.1}}, "loss.terms.labels.eos_coeff", "eos_coef"),
        ({"loss.weights": {"loss_ce": 1.0, "loss_mask": 1.0}}, "loss.weights.loss_mask",
         "loss_giou"),
        ({"dataset": "voc"}, "dataset='voc'", "'shapes', 'coco'"),
        ({"shapes.spec": "tiny"}, "shapes.spec='tiny'", "standard"),
        ({"optim.lr": 0.0}, "optim.lr=0.0", "> 0"),
        ({"optim.lr": -1e-4}, "optim.lr=-0.0001", "> 0"),
        ({"total_steps": 0}, "total_steps=0", "positive integer"),
        ({"total_steps": -5}, "total_steps=-5", "positive integer"),
        ({"log_every": 0}, "log_every=0", "positive integer"),
        ({"max_consecutive_nonfinite": 0}, "max_consecutive_nonfinite=0", "positive integer"),
        ({"checkpoint_every": -1}, "checkpoint_every=-1", ">= 0"),
        ({"image_buckets": [(0, 96)]}, "image_buckets", "positive (H, W)"),
        ({"image_buckets": [(96, -32)]}, "image_buckets", "positive (H, W)"),
        ({"batch_size": 6}, "batch_size=6", "device count 4"),
    ],
)
def test_each_bad_field_is_one_line_naming_it_and_the_choices(overrides, field, allowed):
    config = tiny_config(**overrides)
    config.eval.batch_size = 4
    line = _one_error(config, num_devices=4 if "batch_size" in overrides else 1)
    assert line.startswith(field), line
    assert allowed in line, line


def test_unknown_part_field_is_a_start_up_error_naming_it():
    config = tiny_config()
    config.model.backbone.widht = 8  # a typo: never a silent default
    line = _one_error(config)
    assert line.startswith("model.backbone.widht: not a field of backbone 'resnet18'"), line
    assert "'width'" in line, line


def test_a_renamed_field_names_its_new_place():
    for old, new in (("model.num_queries", "model.queries.num_queries"),
                     ("loss.eos_coef", "loss.terms.labels.eos_coef"),
                     ("model.backbone_norm", "model.backbone.norm")):
        with pytest.raises(KeyError, match=f"now {new}"):
            tiny_config(**{old: 1})


def test_all_problems_are_reported_together():
    config = tiny_config(**{"optim.lr": -1.0, "dataset": "voc", "total_steps": 0})
    lines = _error_lines(config)
    assert [ln.strip().split("=")[0] for ln in lines] == ["dataset", "total_steps", "optim.lr"]


def test_unwritable_workdir_is_reported(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = _one_error(tiny_config(), workdir=str(blocker / "run"))
    assert line.startswith(f"workdir='{blocker / 'run'}' is not writable"), line
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert "is not writable" in _one_error(tiny_config(), workdir=str(ro))
        finally:
            ro.chmod(0o700)


def test_stop_signal_sets_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as stop:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop(2)
        assert stop.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_sigint_interrupts_immediately():
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
