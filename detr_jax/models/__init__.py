"""Models, assembled from parts picked by name: `build_model(config)`.

`config.model` holds the detector-wide fields (`name`, `hidden_dim`, `dtype`) and one sub-dict per
part (`backbone`, `neck`, `transformer`, `queries`, `heads`). Each sub-dict's `name` picks the
part from its registry and its other fields are the part's keyword arguments, unrenamed; the
builder adds `hidden_dim`, `dtype`, `num_classes` (from `config.num_classes`) and the backbone's
`return_levels` (what the neck reads) to the parts that declare them, and the transformer's
`head_layout()` (Deformable DETR, DAB-DETR: `num_layers`, `box_refine`, `two_stage`,
`reference_dim`) to the heads, so the heads always match the decoder. An unknown field stops the
build with a line naming it (detr_jax/models/registry.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from detr_jax.models.backbones import BACKBONES
from detr_jax.models.detector import SetDetector
from detr_jax.models.heads import HEADS
from detr_jax.models.necks import NECKS
from detr_jax.models.queries import QUERY_GENERATORS
from detr_jax.models.registry import PartConfigError, Registry
from detr_jax.models.transformers import TRANSFORMERS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Detector name -> its class; every detector is handed the parts below.
DETECTORS: dict[str, type[nn.Module]] = {"detr": SetDetector}
MODEL_CHOICES = tuple(DETECTORS)
PARTS: dict[str, Registry] = {
    "neck": NECKS,  # first: it says which backbone levels to build
    "backbone": BACKBONES,
    "transformer": TRANSFORMERS,
    "queries": QUERY_GENERATORS,
    "heads": HEADS,
}
MODEL_FIELDS = ("name", "hidden_dim", "dtype", *PARTS)


def model_problems(config: Any) -> list[str]:
    """One line per problem with `config.model` that stops `build_model` (empty when none)."""
    m = config.model
    lines = [f"model.{k}: not a model field; fields: {MODEL_FIELDS}"
             for k in m if k not in MODEL_FIELDS]
    lines += [f"model.{k} is missing" for k in MODEL_FIELDS if k not in m]
    if lines:
        return lines
    if m.name not in DETECTORS:
        lines.append(f"model.name={m.name!r}; choose one of {MODEL_CHOICES}")
    if m.dtype not in DTYPES:
        lines.append(f"model.dtype={m.dtype!r}; choose one of {tuple(DTYPES)}")
    shared = _shared(config, return_levels=())
    transformer = None
    for part, registry in PARTS.items():
        sub = m[part]
        if not hasattr(sub, "keys"):
            lines.append(f"model.{part}={sub!r} must be a sub-dict with a `name` "
                         f"(one of {tuple(registry)})")
            continue
        part_shared = shared
        if part == "heads" and not lines:
            transformer = TRANSFORMERS.build(m.transformer, "model.transformer", **shared)
            part_shared = dict(shared, **_head_layout(transformer))
        lines += registry.problems(sub, f"model.{part}", part_shared)
    check = getattr(transformer, "part_problems", None)
    if not lines and check:  # parts that only work together (deformable: a multi-scale neck)
        lines += check(NECKS.build(m.neck, "model.neck", **shared),
                       QUERY_GENERATORS.build(m.queries, "model.queries", **shared))
    return lines


def _levels(neck: nn.Module, heads: Any) -> tuple[str, ...]:
    """The backbone levels to build: the neck's, then those a mask head reads besides
    (`model.heads.feature_levels`, e.g. DETR's FPN mask head: C2-C4)."""
    extra = tuple(heads.get("feature_levels", ()) or ())
    return tuple(neck.input_levels) + tuple(lv for lv in extra if lv not in neck.input_levels)


def _head_layout(transformer: nn.Module) -> dict[str, Any]:
    """What the transformer tells its heads (`head_layout()`; empty for DETR's)."""
    return dict(getattr(transformer, "head_layout", dict)())


def _shared(config: Any, **derived: Any) -> dict[str, Any]:
    m = config.model
    return dict(hidden_dim=m.hidden_dim, dtype=DTYPES.get(m.dtype), num_classes=config.num_classes,
                **derived)


def build_model(config: Any) -> nn.Module:
    """The detector `config.model.name` names, handed the parts its sub-dicts name.

    Only attribute and item access is used, so any mapping-like config works (no
    ml_collections needed). Raises PartConfigError naming the first bad fields.
    """
    lines = model_problems(config)
    if lines:
        raise PartConfigError("; ".join(lines))
    m = config.model
    neck = NECKS.build(m.neck, "model.neck", **_shared(config))
    shared = _shared(config, return_levels=_levels(neck, m.heads))
    parts = {part: registry.build(m[part], f"model.{part}", **shared)
             for part, registry in PARTS.items() if part not in ("neck", "heads")}
    parts["heads"] = HEADS.build(m.heads, "model.heads", **shared,
                                 **_head_layout(parts["transformer"]))
    return DETECTORS[m.name](neck=neck, **parts)


def init_variables(model: nn.Module, image_hw: tuple[int, int], rng: jax.Array) -> dict:
    """The model's variables (`params`, and `batch_stats` with trainable BatchNorm), initialised
    on one zero image of `image_hw` = (H, W) with an all-real pixel mask (inference mode).

    The one initialisation helper: training, inference, conversion checks and the benchmarks
    call it (under `jax.eval_shape` when only the shapes are needed, see `variable_shapes`).
    """
    h, w = image_hw
    images = jnp.zeros((1, h, w, 3), jnp.float32)
    mask = jnp.ones((1, h, w), bool)
    return model.init({"params": rng}, images, mask, train=False)


def variable_shapes(model: nn.Module, image_hw: tuple[int, int] = (64, 64)) -> dict:
    """`init_variables` as `jax.ShapeDtypeStruct`s, without running or compiling the model."""
    return jax.eval_shape(lambda r: init_variables(model, image_hw, r), jax.random.PRNGKey(0))


__all__ = ["BACKBONES", "DETECTORS", "DTYPES", "HEADS", "MODEL_CHOICES", "NECKS", "PARTS",
           "PartConfigError", "QUERY_GENERATORS", "TRANSFORMERS", "build_model", "init_variables",
           "model_problems", "variable_shapes"]
