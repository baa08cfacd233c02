"""Start-up checks of a config: each problem is one line naming the field and what is allowed."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from detr_jax import transfer
from detr_jax.core import sharding
from detr_jax.data import DATASET_CHOICES, SHAPES_SPECS
from detr_jax.matching import MATCHERS
from detr_jax.models import MODEL_CHOICES
from detr_jax.models.backbone import BACKBONE_CHOICES
from detr_jax.models.norms import NORM_CHOICES
from detr_jax.models.position_encoding import POSITION_EMBEDDING_CHOICES
from detr_jax.optim import SCHEDULE_CHOICES


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def workdir_problem(workdir: str) -> str | None:
    """Why `workdir` cannot hold checkpoints and results (None when it can).

    Creates the directory if needed and writes and deletes a probe file in it. Remote paths
    (`gs://...`) are left to the storage client.
    """
    if "://" in workdir:
        return None
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe_"):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def validate_config(config: Any, num_devices: int, workdir: str | None = None) -> None:
    """Raises ConfigError listing every invalid field of `config` (one line each).

    With `workdir`, also checks that it can be created and written.
    """
    errors: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    def choice(field: str, value: Any, choices: tuple) -> None:
        need(value in choices, f"{field}={value!r}: choose one of {choices}")

    m = config.model
    choice("dataset", config.dataset, DATASET_CHOICES)
    if config.dataset == "shapes":
        choice("shapes.spec", config.shapes.spec, tuple(SHAPES_SPECS))
    choice("model.name", m.name, MODEL_CHOICES)
    choice("model.backbone", m.backbone, BACKBONE_CHOICES)
    choice("model.backbone_norm", m.backbone_norm, NORM_CHOICES)
    choice("model.position_embedding", m.position_embedding, POSITION_EMBEDDING_CHOICES)
    choice("matcher.name", config.matcher.name, tuple(MATCHERS))
    choice("optim.schedule", config.optim.schedule, SCHEDULE_CHOICES)
    choice("model.backbone_frozen_stages", m.backbone_frozen_stages, (0, 1, 2, 3, 4, 5))
    choice("model.feature_level", m.feature_level, ("C3", "C4", "C5"))
    need(
        isinstance(m.num_query_groups, int) and m.num_query_groups >= 1,
        f"model.num_query_groups={m.num_query_groups!r} must be an integer >= 1",
    )
    need(
        m.num_queries > config.max_boxes,
        f"model.num_queries={m.num_queries} must exceed max_boxes={config.max_boxes} "
        "(every ground-truth box needs its own query)",
    )
    for field in (
        "total_steps",
        "batch_size",
        "num_classes",
        "max_boxes",
        "model.num_queries",
        "model.hidden_dim",
        "model.nheads",
        "model.dec_layers",
        "eval.batch_size",
        "log_every",
        "keep_checkpoints",
        "max_consecutive_nonfinite",
        "preemption_sync_every",
    ):
        value = config
        for part in field.split("."):
            value = value[part]
        need(isinstance(value, int) and value > 0, f"{field}={value!r} must be a positive integer")
    for field in ("eval_every", "checkpoint_every", "optim.warmup_steps"):
        value = config
        for part in field.split("."):
            value = value[part]
        need(isinstance(value, int) and value >= 0, f"{field}={value!r} must be an integer >= 0")
    need(m.enc_layers >= 0, f"model.enc_layers={m.enc_layers} must be >= 0")
    need(
        m.hidden_dim % m.nheads == 0,
        f"model.hidden_dim={m.hidden_dim} must be divisible by model.nheads={m.nheads}",
    )
    need(config.optim.lr > 0, f"optim.lr={config.optim.lr} must be > 0")
    need(
        config.optim.backbone_lr_mult >= 0,
        f"optim.backbone_lr_mult={config.optim.backbone_lr_mult} must be >= 0",
    )
    need(
        isinstance(config.get("xla_cpu_ynnpack", False), bool),
        f"xla_cpu_ynnpack={config.get('xla_cpu_ynnpack')!r} must be true or false",
    )
    need(0 <= m.dropout < 1, f"model.dropout={m.dropout} must be in [0, 1)")
    need(0 <= m.drop_path < 1, f"model.drop_path={m.drop_path} must be in [0, 1)")
    need(
        0 <= config.loss.label_smoothing < 1,
        f"loss.label_smoothing={config.loss.label_smoothing} must be in [0, 1)",
    )
    _check_mesh(config, num_devices, need, errors)
    buckets = list(config.image_buckets)
    need(
        len(buckets) > 0 and all(len(b) == 2 and b[0] > 0 and b[1] > 0 for b in buckets),
        f"image_buckets={buckets!r} must be a non-empty list of positive (H, W) pairs",
    )
    if config.dataset in ("custom", "coco"):
        _check_transforms(config, buckets, need)
    errors += transfer.config_problems(config)
    if workdir is not None:
        problem = workdir_problem(workdir)
        need(problem is None, f"workdir={workdir!r} is not writable ({problem})")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def _check_mesh(config: Any, num_devices: int, need: Any, errors: list[str]) -> None:
    """The mesh fits the devices; both batch sizes split evenly over data * fsdp devices."""
    mesh = config.get("mesh")
    problems = [] if mesh is None else sharding.mesh_problems(mesh, num_devices)
    errors += problems
    if problems:
        return
    for field, value in (("batch_size", config.batch_size),
                         ("eval.batch_size", config.eval.batch_size)):
        need(value % num_devices == 0,
             f"{field}={value} must be divisible by the device count {num_devices} "
             "(= mesh.data * mesh.fsdp: every device gets its own images)")


def _check_transforms(config: Any, buckets: list, need: Any) -> None:
    """Real-data checks (issue 4): dataset paths, transform sizes, a bucket fitting any image."""
    if config.dataset == "custom":
        for f in ("train_annotations", "train_images", "val_annotations", "val_images"):
            need(bool(config.custom[f]), f"custom.{f} is empty: give the path")
        need(config.custom.num_workers >= 1,
             f"custom.num_workers={config.custom.num_workers} must be >= 1")
    t = config.transforms
    sizes = list(t.scales) + list(t.select_scales) + [t.eval_size, t.crop_min, t.crop_max]
    need(all(isinstance(v, int) and v > 0 for v in sizes) and len(t.scales) > 0,
         f"transforms sizes must be positive integers (scales={list(t.scales)}, "
         f"select_scales={list(t.select_scales)}, eval_size={t.eval_size}, "
         f"crop_min={t.crop_min}, crop_max={t.crop_max})")
    need(t.crop_min <= t.crop_max,
         f"transforms.crop_min={t.crop_min} must be <= transforms.crop_max={t.crop_max}")
    # Any image side is at most max_size after the transforms, so a max_size square always fits.
    need(any(len(b) == 2 and b[0] >= t.max_size and b[1] >= t.max_size for b in buckets),
         f"image_buckets={buckets!r}: no bucket is at least transforms.max_size={t.max_size} "
         "on both sides, so some images would fit no bucket")
