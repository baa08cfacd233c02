"""The one prediction function (`make_predict_fn`) and single-image inference (`Predictor`).

`make_predict_fn` (model apply + postprocessing) is what evaluation (`train.eval_step`), the
`detr_jax.predict` CLI, the notebook and export use; see docs/interfaces.md "predict_fn".

Boxes: the model predicts normalised cxcywh (relative to the unpadded input); predictions are
xyxy pixels of the *original* image (`batch["orig_size"]`). Attention: `MultiHeadAttention` sows
its head-averaged weights under `intermediates`; the Predictor reads the last decoder layer's
cross-attention [Q, h*w] and the last encoder layer's self-attention [h*w, h*w].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.traverse_util
import jax
import numpy as np

from detr_jax.core.compile_options import step_compiler_options
from detr_jax.data.batching import collate
from detr_jax.data.transforms import resize_image
from detr_jax.evaluation.postprocess import postprocess, postprocess_sigmoid
from detr_jax.evaluation.postprocess_masks import (
    masks_to_original,
    panoptic_segments,
    postprocess_panoptic,
    postprocess_segm,
)
from detr_jax.models import build_model, variable_shapes
from detr_jax.pretrained import load_params_checkpoint
from detr_jax.transfer import merge_pretrained

# name -> fn(pred_logits [B, Q, C+1], pred_boxes [B, Q, 4] normalised cxcywh, orig_size [B, 2]
# (h, w), top_k) of the last decoder layer -> dict of [B, K, ...] arrays (facebookresearch/detr's
# `postprocessors` dict). The MASK_POSTPROCESSORS also get `pred_masks=` (the last layer's
# [B, Q, h, w] mask logits) and `pixel_mask=` (evaluation/postprocess_masks.py).
POSTPROCESSORS: dict[str, Callable[..., dict[str, jax.Array]]] = {
    "bbox": postprocess, "segm": postprocess_segm, "panoptic": postprocess_panoptic}
# The same names for sigmoid heads (pred_logits [B, Q, C], no no-object column), chosen when the
# model's heads declare `class_activation = "sigmoid"` (Deformable DETR).
SIGMOID_POSTPROCESSORS: dict[str, Callable[..., dict[str, jax.Array]]] = {
    "bbox": postprocess_sigmoid,
    "segm": partial(postprocess_segm, activation="sigmoid", mode="pairs"),
    "panoptic": partial(postprocess_panoptic, activation="sigmoid")}
MASK_POSTPROCESSORS = ("segm", "panoptic")


def class_activation(model: Any) -> str:
    """"softmax" or "sigmoid": the `class_activation` the model's heads declare (a ClassVar of
    the heads module; heads without one, DETR's, are softmax)."""
    return getattr(getattr(model, "heads", None), "class_activation", "softmax")

PredictFn = Callable[[dict, dict], tuple[dict, dict]]


def make_predict_fn(
    model: Any,
    *,
    top_k: int,
    postprocessors: Sequence[str] = ("bbox",),
    intermediates: bool = False,
    options: dict[str, dict[str, Any]] | None = None,
) -> PredictFn:
    """A pure `predict_fn(variables, batch) -> (predictions, outputs)` (jit it yourself).

    Args:
      model: the DETR module (`detr_jax.models.build_model`); applied with `train=False`.
      top_k: detections kept per image: softmax heads, the best queries by score,
        K = min(top_k, Q); sigmoid heads, the best (query, class) pairs, K = min(top_k, Q*C).
      postprocessors: names in `POSTPROCESSORS`, each run on the last decoder layer. For
        heads with `class_activation == "sigmoid"` the name maps to `SIGMOID_POSTPROCESSORS`
        ("bbox": `postprocess_sigmoid`), otherwise to `POSTPROCESSORS` ("bbox": `postprocess`).
        "segm" / "panoptic" (evaluation/postprocess_masks.py) also read the last layer's
        `pred_masks` and the batch's `pixel_mask`.
      intermediates: also return the sown intermediates (attention weights).
      options: {postprocessor name: keyword settings}, e.g. {"panoptic":
        {"object_mask_threshold": 0.8}} (`eval.panoptic_object_threshold`).

    `variables`: {"params": ..., "batch_stats": ... (only when the backbone has any)}.
    `batch`: `image` float32 [B, H, W, 3] ImageNet-normalised, zero padding; `pixel_mask` bool
    [B, H, W], True on real pixels; `orig_size` int [B, 2] (h, w) the boxes are scaled to; other
    keys are ignored.

    Returns `predictions` = {name: postprocessor output}, for "bbox" `scores` float32 [B, K]
    (descending), `labels` int32 [B, K] (contiguous), `boxes` float32 [B, K, 4] xyxy pixels of the
    original image, `queries` int32 [B, K] (query index; with sigmoid heads a query may appear
    once per class); and `outputs` = the raw model outputs (`pred_logits` [L, B, Q, C+1] softmax
    or [L, B, Q, C] sigmoid, `pred_boxes` [L, B, Q, 4] normalised cxcywh, `dense_*` with a
    dense head, `enc_outputs` with a two-stage encoder) plus, with `intermediates`,
    `intermediates` (the sown collection).
    """
    registry = (SIGMOID_POSTPROCESSORS if class_activation(model) == "sigmoid"
                else POSTPROCESSORS)
    unknown = [n for n in postprocessors if n not in registry]
    if unknown:
        raise ValueError(f"unknown postprocessors {unknown}; choose from {list(registry)}")
    options = dict(options or {})
    fns = {n: partial(registry[n], **options.get(n, {})) for n in postprocessors}

    def predict_fn(variables: dict, batch: dict) -> tuple[dict, dict]:
        if intermediates:
            outputs, state = model.apply(
                variables, batch["image"], batch["pixel_mask"], train=False,
                mutable=["intermediates"],
            )
            outputs = dict(outputs, intermediates=state["intermediates"])
        else:
            outputs = model.apply(variables, batch["image"], batch["pixel_mask"], train=False)
        logits, boxes = outputs["pred_logits"][-1], outputs["pred_boxes"][-1]
        predictions = {n: fn(logits, boxes, batch["orig_size"], top_k, **_mask_inputs(
            n, outputs, batch)) for n, fn in fns.items()}
        return predictions, outputs

    return predict_fn


def _mask_inputs(name: str, outputs: dict, batch: dict) -> dict:
    if name not in MASK_POSTPROCESSORS:
        return {}
    if "pred_masks" not in outputs:
        raise ValueError(f"postprocessor {name!r} needs outputs['pred_masks'] (a mask head)")
    return {"pred_masks": outputs["pred_masks"][-1], "pixel_mask": batch["pixel_mask"]}


def load_for_inference(config: Any, checkpoint: str) -> tuple[Any, dict]:
    """(model, variables) with every param taken from `checkpoint` (any `init_from` path).

    Raises ValueError when the checkpoint does not fill the model built from `config` (for
    instance a different `num_classes`): prediction never runs on re-initialised weights.
    """
    model = build_model(config)
    fresh = variable_shapes(model, tuple(config.image_buckets[0]))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
    # A run with the EMA on evaluated with its EMA params: predict with those too.
    prefer_ema = float(config.optim.get("ema_decay", 0.0) or 0.0) > 0
    src_params, src_stats, _ = load_params_checkpoint(checkpoint, prefer_ema=prefer_ema)
    params, stats, report = merge_pretrained(
        fresh["params"], fresh.get("batch_stats", {}), src_params, src_stats, "all"
    )
    if report["reinitialised"] or report["kept"]:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit the config: missing "
            f"{report['kept'] + report['reinitialised']}; use the config it was trained with "
            "(or its meta.json `config_fields`)"
        )
    variables = {"params": params}
    if stats:
        variables["batch_stats"] = stats
    return model, variables


def preprocess(
    image: np.ndarray, min_size: int = 0, max_size: int = 0, multiple: int = 32
) -> dict[str, np.ndarray]:
    """One uint8 [H, W, 3] image -> a batch of one for `predict_fn`, as evaluation builds it.

    Resized by the eval transform's `resize_image(image, min_size, max_size)` (`min_size` 0: no
    resize; `max_size` 0: no cap), then normalised and padded by the eval batches' `collate`,
    on a canvas of the next multiple of `multiple` (bottom/right padding). Returns the Batch
    keys of docs/interfaces.md, among them `image` float32 [1, H', W', 3], `pixel_mask` bool
    [1, H', W'], `size` int32 [1, 2] (h, w) resized and `orig_size` int32 [1, 2] (H, W) of
    `image` (the predicted boxes are xyxy pixels of it).
    """
    resized = image if min_size <= 0 else resize_image(image, min_size, max_size or None)
    h, w = resized.shape[:2]
    canvas = (-(-h // multiple) * multiple, -(-w // multiple) * multiple)
    sample = {"image": resized, "boxes": np.zeros((0, 4), np.float32),
              "labels": np.zeros((0,), np.int32), "image_id": 0,
              "orig_size": np.array(image.shape[:2], np.int32)}
    batch, _ = collate([sample], buckets=[canvas], max_boxes=0)
    return batch


def _sown(inter: dict, path: str) -> np.ndarray:
    flat = flax.traverse_util.flatten_dict(inter, sep="/")
    return np.asarray(flat[path][0])


def eval_resize(config: Any) -> tuple[int, int]:
    """(min_size, max_size) that resize images as `config`'s evaluation does; (0, 0): no resize.

    The COCO-format datasets (`coco`, `custom`) evaluate through `detr_eval_transform`
    (`transforms.eval_size`, `transforms.max_size`); the shapes dataset is not resized.
    """
    if config.dataset in ("coco", "custom"):
        return int(config.transforms.eval_size), int(config.transforms.max_size)
    return 0, 0


class Predictor:
    """A model, its variables and the jitted `make_predict_fn(..., intermediates=True)`."""

    def __init__(
        self,
        model: Any,
        variables: dict,
        xla_cpu_ynnpack: bool = False,
        top_k: int | None = None,
        masks: Sequence[str] = (),
        is_thing: Sequence[bool] | None = None,
        object_threshold: float = 0.8,
        overlap_threshold: float = 0.8,
    ):
        """`top_k`: detections ranked before the score threshold (default: every query).
        `masks`: mask outputs for models with a mask head, "segm" (each kept detection's mask)
        and / or "panoptic" (the panoptic map; `is_thing` per class, default all things; the
        thresholds as `eval.panoptic_object_threshold` / `_overlap_threshold`)."""
        self.model, self.variables = model, variables
        top_k = int(model.queries.num_queries) if top_k is None else int(top_k)
        self.masks = tuple(masks)
        self.is_thing = None if is_thing is None else tuple(bool(t) for t in is_thing)
        self.overlap_threshold = float(overlap_threshold)
        self._predict = jax.jit(
            make_predict_fn(model, top_k=top_k, intermediates=True,
                            postprocessors=("bbox", *self.masks),
                            options={"panoptic": {"object_mask_threshold": object_threshold}}),
            compiler_options=step_compiler_options(xla_cpu_ynnpack),
        )

    def __call__(
        self,
        image: np.ndarray,
        score_threshold: float = 0.5,
        point: tuple[float, float] | None = None,
        min_size: int = 0,
        max_size: int = 0,
    ) -> dict[str, Any]:
        """Detections and attention maps for one uint8 [H, W, 3] image.

        `preprocess(image, min_size, max_size)` resizes it with the eval transform's resize
        (`min_size` 0: no resize, `max_size` 0: no cap; `eval_resize(config)` gives a config's
        evaluation sizes) and pads it bottom/right to a multiple of 32; `predict_fn` keeps the
        top-k queries by score, and of those the ones with score >= `score_threshold`.

        Returns a dict with `scores` [K], `labels` [K] (contiguous), `boxes` [K, 4] xyxy pixels
        of `image`, `queries` [K] (query index of each kept detection, best first),
        `cross_attention` [K, h, w] (last decoder layer, over the real feature positions),
        `point` (y, x) in image pixels and `encoder_attention` [h, w] (the last encoder layer's
        self-attention of that point's feature position; default point: the centre of the best
        detection, else of the image; None without encoder layers). Deformable attention has
        no dense maps: both are None for Deformable DETR.
        """
        orig_h, orig_w = image.shape[:2]
        batch = preprocess(image, min_size, max_size)
        x, (rh, rw) = batch["image"], (int(v) for v in batch["size"][0])
        predictions, outputs = self._predict(self.variables, batch)
        bbox = jax.device_get(predictions["bbox"])
        keep = np.nonzero(bbox["scores"][0] >= score_threshold)[0]  # a prefix: sorted scores
        scores, labels = bbox["scores"][0][keep], bbox["labels"][0][keep]
        xyxy = bbox["boxes"][0][keep].reshape(-1, 4)
        queries = bbox["queries"][0][keep]
        extra = self._mask_outputs(predictions, keep, (orig_h, orig_w))

        inter = outputs["intermediates"]["transformer"]
        n_dec = len([k for k in inter if k.startswith("decoder_layers_")])
        n_enc = len([k for k in inter if k.startswith("encoder_layers_")])
        path = f"decoder_layers_{n_dec - 1}/multihead_attn/attention_weights"
        if path not in flax.traverse_util.flatten_dict(inter, sep="/"):
            # Deformable attention has no dense maps (it sows its sampling locations instead).
            return {"scores": scores, "labels": labels, "boxes": xyxy, "queries": queries,
                    "cross_attention": None, "encoder_attention": None, "point": point, **extra}
        cross = _sown(inter, path)[0]
        # The transformer's feature stride (8, 16 or 32 with feature_level and dilation) from
        # its token count: the padded input is a multiple of 32, so the map is exactly H/s x W/s.
        stride = int(round((x.shape[1] * x.shape[2] / cross.shape[-1]) ** 0.5))
        fh, fw = x.shape[1] // stride, x.shape[2] // stride
        if fh * fw != cross.shape[-1]:
            raise ValueError(f"cannot lay {cross.shape[-1]} attention tokens out on the "
                             f"{x.shape[1]}x{x.shape[2]} input's feature grid")
        real_h, real_w = -(-rh // stride), -(-rw // stride)
        cross = cross.reshape(-1, fh, fw)[queries][:, :real_h, :real_w]
        if point is None:
            if len(keep):
                point = (float(xyxy[0, 1] + xyxy[0, 3]) / 2, float(xyxy[0, 0] + xyxy[0, 2]) / 2)
            else:
                point = (orig_h / 2, orig_w / 2)
        py = min(max(int(point[0] * rh / orig_h) // stride, 0), real_h - 1)
        px = min(max(int(point[1] * rw / orig_w) // stride, 0), real_w - 1)
        enc = None
        if n_enc:
            enc_w = _sown(inter, f"encoder_layers_{n_enc - 1}/self_attn/attention_weights")[0]
            enc = enc_w[py * fw + px].reshape(fh, fw)[:real_h, :real_w]
        return {
            "scores": scores,
            "labels": labels,
            "boxes": xyxy,
            "queries": queries,
            "cross_attention": cross,
            "encoder_attention": enc,
            "point": point,
            **extra,
        }

    def _mask_outputs(self, predictions: dict, keep: np.ndarray, orig_hw: tuple[int, int]
                      ) -> dict[str, Any]:
        """`masks` bool [K, H0, W0] of the kept detections ("segm") and `panoptic` {`ids` int32
        [H0, W0], `segments`} ("panoptic"), at the original image's size."""
        out: dict[str, Any] = {}
        if "segm" in self.masks:
            segm = jax.device_get(predictions["segm"])
            out["masks"] = masks_to_original(segm["masks"][0][keep], segm["size"][0], orig_hw)
        if "panoptic" in self.masks:
            dense = {k: np.asarray(v)[0] for k, v in jax.device_get(
                predictions["panoptic"]).items()}
            n = int(self.model.heads.num_classes)
            out["panoptic"] = panoptic_segments(dense, orig_hw, self.is_thing or (True,) * n,
                                                self.overlap_threshold)
        return out
