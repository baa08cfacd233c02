"""Start-up checks of a config: each problem is one line naming the field and what is allowed."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from detr_jax import ema, transfer
from detr_jax.core import sharding
from detr_jax.data import DATASET_CHOICES, PANOPTIC_SPECS, SHAPES_SPECS
from detr_jax.losses import loss_problems
from detr_jax.matching import MATCHERS, check_cost_weights, get_matcher
from detr_jax.models import model_problems
from detr_jax.models.conv import WEIGHT_GRAD_CHOICES
from detr_jax.models.norms import NORM_CHOICES
from detr_jax.models.position_encoding import POSITION_EMBEDDING_CHOICES
from detr_jax.models.transformers import ATTENTION_CHOICES
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


def _check_postprocessors(config: Any, need: Any) -> None:
    """`eval.postprocessors`: known names, "bbox" first, masks only with masks in the data."""
    names = tuple(config.eval.get("postprocessors", ("bbox",)))
    known = ("bbox", "segm", "panoptic")
    need(bool(names) and names[0] == "bbox" and all(n in known for n in names),
         f"eval.postprocessors={names!r}: start with 'bbox', then any of {known[1:]}")
    if any(n in names for n in known[1:]):
        need(bool(config.get("data", {}).get("with_masks", False)),
             f"eval.postprocessors={names!r} scores masks: set data.with_masks=True")
    for field in ("panoptic_object_threshold", "panoptic_overlap_threshold"):
        value = config.eval.get(field, 0.8)
        need(isinstance(value, int | float) and 0 <= value <= 1,
             f"eval.{field}={value!r} must be a number in [0, 1]")
    if "panoptic" in names:
        need(config.dataset in ("shapes_panoptic", "coco", "custom"),
             f"eval.postprocessors has 'panoptic' but dataset={config.dataset!r} has no "
             "panoptic ground truth")


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

    choice("dataset", config.dataset, DATASET_CHOICES)
    if config.dataset == "shapes":
        choice("shapes.spec", config.shapes.spec, tuple(SHAPES_SPECS))
    if config.dataset == "shapes_panoptic":
        choice("shapes.spec", config.shapes.spec, tuple(PANOPTIC_SPECS))
    _check_data(config, need)
    choice("matcher.name", config.matcher.name, tuple(MATCHERS))
    _check_matcher(config.matcher, need)
    choice("optim.schedule", config.optim.schedule, SCHEDULE_CHOICES)
    for field in ("total_steps", "batch_size", "num_classes", "max_boxes", "eval.batch_size",
                  "log_every", "keep_checkpoints", "max_consecutive_nonfinite",
                  "preemption_sync_every"):
        value = _get(config, field)
        need(isinstance(value, int) and value > 0, f"{field}={value!r} must be a positive integer")
    for field in ("eval_every", "checkpoint_every", "optim.warmup_steps"):
        value = _get(config, field)
        need(isinstance(value, int) and value >= 0, f"{field}={value!r} must be an integer >= 0")
    need(config.optim.lr > 0, f"optim.lr={config.optim.lr} must be > 0")
    _check_postprocessors(config, need)
    errors += ema.problems(config)
    need(
        isinstance(config.get("xla_cpu_ynnpack", False), bool),
        f"xla_cpu_ynnpack={config.get('xla_cpu_ynnpack')!r} must be true or false",
    )
    problems = model_problems(config)
    errors += problems
    if not problems:
        _check_part_values(config, need, choice)
    errors += loss_problems(config)
    labels = config.loss.terms.get("labels", {})
    smoothing = labels.get("label_smoothing", 0.0)
    need(0 <= smoothing < 1, f"loss.terms.labels.label_smoothing={smoothing} must be in [0, 1)")
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


def _check_data(config: Any, need: Any) -> None:
    """`data.*`: `with_masks` is a bool, and the dataset has masks when it is on."""
    data = config.get("data")
    if data is None:
        return
    value = data.get("with_masks", False)
    need(isinstance(value, bool), f"data.with_masks={value!r} must be true or false")
    if value is True and config.dataset == "coco":
        from detr_jax.data.tfds_coco_panoptic import MASK_DATASETS

        need(config.coco.name in MASK_DATASETS,
             f"data.with_masks=True but coco.name={config.coco.name!r} has no masks; choose one "
             f"of {MASK_DATASETS}")


def _check_matcher(mt: Any, need: Any) -> None:
    """The matcher's own settings (every field but `name` and `costs`) and the cost terms."""
    try:
        check_cost_weights(mt.get("costs", {}))
    except ValueError as e:
        need(False, f"matcher.costs: {e}")
    if mt.name in MATCHERS:
        settings = {k: v for k, v in mt.items() if k not in ("name", "costs")}
        try:
            get_matcher(mt.name, **settings)
        except (TypeError, ValueError) as e:
            need(False, str(e))


def _get(config: Any, field: str) -> Any:
    value = config
    for part in field.split("."):
        value = value[part]
    return value


def _check_part_values(config: Any, need: Any, choice: Any) -> None:
    """Values of the standard parts' fields (each check runs when the part has the field)."""
    m = config.model
    b, n, t, q = m.backbone, m.neck, m.transformer, m.queries
    if "norm" in b:
        choice("model.backbone.norm", b.norm, NORM_CHOICES)
    if "conv_weight_grad" in b:
        choice("model.backbone.conv_weight_grad", b.conv_weight_grad, WEIGHT_GRAD_CHOICES)
    if "frozen_stages" in b:
        choice("model.backbone.frozen_stages", b.frozen_stages, (0, 1, 2, 3, 4, 5))
    if "level" in n:
        choice("model.neck.level", n.level, ("C3", "C4", "C5"))
    if "position_embedding" in n:
        choice("model.neck.position_embedding", n.position_embedding,
               POSITION_EMBEDDING_CHOICES)
    if "attention_impl" in t:
        choice("model.transformer.attention_impl", t.attention_impl, ATTENTION_CHOICES)
    need(isinstance(m.hidden_dim, int) and m.hidden_dim > 0,
         f"model.hidden_dim={m.hidden_dim!r} must be a positive integer")
    for f in ("nheads", "dec_layers"):
        if f in t:
            need(isinstance(t[f], int) and t[f] > 0,
                 f"model.transformer.{f}={t[f]!r} must be a positive integer")
    if "enc_layers" in t:
        need(t.enc_layers >= 0, f"model.transformer.enc_layers={t.enc_layers} must be >= 0")
    if "nheads" in t and isinstance(t.nheads, int) and t.nheads > 0:
        need(m.hidden_dim % t.nheads == 0, f"model.hidden_dim={m.hidden_dim} must be divisible "
             f"by model.transformer.nheads={t.nheads}")
    for f in ("dropout", "drop_path"):
        if f in t:
            need(0 <= t[f] < 1, f"model.transformer.{f}={t[f]} must be in [0, 1)")
    if "num_queries" in q:
        need(isinstance(q.num_queries, int) and q.num_queries > config.max_boxes,
             f"model.queries.num_queries={q.num_queries!r} must be an integer above "
             f"max_boxes={config.max_boxes} (every ground-truth box needs its own query)")
    if "num_groups" in q:
        need(isinstance(q.num_groups, int) and q.num_groups >= 1,
             f"model.queries.num_groups={q.num_groups!r} must be an integer >= 1")


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
        pan = [bool(config.custom.get(f, "")) for f in ("train_panoptic_masks",
                                                         "val_panoptic_masks")]
        need(pan[0] == pan[1], "custom.train_panoptic_masks and custom.val_panoptic_masks must "
             "be set together (COCO panoptic PNG folders) or both left empty")
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
