"""Single-image inference with attention maps (used by `detr_jax.predict` and the notebook).

Boxes: the model predicts normalised cxcywh (relative to the unpadded input); results here are
xyxy pixels of the *original* image. Attention: `MultiHeadAttention` sows its head-averaged
weights under `intermediates`; we read the last decoder layer's cross-attention [Q, h*w] and the
last encoder layer's self-attention [h*w, h*w].
"""

from __future__ import annotations

from typing import Any

import flax.traverse_util
import jax
import numpy as np
from PIL import Image

from detr_jax.core.compile_options import step_compiler_options
from detr_jax.data.batching import IMAGENET_MEAN, IMAGENET_STD
from detr_jax.models import build_model, variable_shapes
from detr_jax.pretrained import load_params_checkpoint
from detr_jax.transfer import merge_pretrained


def load_for_inference(config: Any, checkpoint: str) -> tuple[Any, dict]:
    """(model, variables) with every param taken from `checkpoint` (any `init_from` path).

    Raises ValueError when the checkpoint does not fill the model built from `config` (for
    instance a different `num_classes`): prediction never runs on re-initialised weights.
    """
    model = build_model(config)
    fresh = variable_shapes(model, tuple(config.image_buckets[0]))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
    src_params, src_stats, _ = load_params_checkpoint(checkpoint)
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


def resize_shorter(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """As DETR's RandomResize([min_size], max_size); a no-op when min_size is 0."""
    if min_size <= 0:
        return image
    h, w = image.shape[:2]
    size = float(min_size)
    if max_size > 0 and max(h, w) / min(h, w) * size > max_size:
        size = max_size * min(h, w) / max(h, w)
    scale = size / min(h, w)
    new = (int(round(w * scale)), int(round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(new, Image.BILINEAR))


def prepare(image: np.ndarray, multiple: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] -> (normalised float32 [1, H', W', 3], pixel_mask bool [1, H', W']) padded
    at the bottom/right to a multiple of `multiple`."""
    h, w = image.shape[:2]
    ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = np.zeros((1, ph, pw, 3), np.float32)
    x[0, :h, :w] = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    mask = np.zeros((1, ph, pw), bool)
    mask[0, :h, :w] = True
    return x, mask


def _sown(inter: dict, path: str) -> np.ndarray:
    flat = flax.traverse_util.flatten_dict(inter, sep="/")
    return np.asarray(flat[path][0])


class Predictor:
    """A model, its variables and one jitted forward pass that also returns the attention."""

    def __init__(self, model: Any, variables: dict, xla_cpu_ynnpack: bool = False):
        self.model, self.variables = model, variables
        self._apply = jax.jit(
            lambda v, a, m: model.apply(v, a, m, mutable=["intermediates"]),
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

        Returns a dict with `scores` [K], `labels` [K] (contiguous), `boxes` [K, 4] xyxy pixels
        of `image`, `queries` [K] (query index of each kept detection, best first),
        `cross_attention` [K, h, w] (last decoder layer, over the real feature positions),
        `point` (y, x) in image pixels and `encoder_attention` [h, w] (the last encoder layer's
        self-attention of that point's feature position; default point: the centre of the best
        detection, else of the image; None without encoder layers).
        """
        orig_h, orig_w = image.shape[:2]
        resized = resize_shorter(image, min_size, max_size)
        x, mask = prepare(resized)
        out, state = self._apply(self.variables, x, mask)
        logits = np.asarray(out["pred_logits"][-1, 0])
        boxes = np.asarray(out["pred_boxes"][-1, 0])
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))[:, :-1]
        scores, labels = probs.max(-1), probs.argmax(-1)
        keep = np.nonzero(scores >= score_threshold)[0]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        cx, cy, bw, bh = boxes[keep].T
        xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1)
        xyxy = (xyxy * np.array([orig_w, orig_h, orig_w, orig_h], np.float32)).reshape(-1, 4)

        inter = state["intermediates"]["transformer"]
        n_dec = len([k for k in inter if k.startswith("decoder_layers_")])
        n_enc = len([k for k in inter if k.startswith("encoder_layers_")])
        rh, rw = resized.shape[:2]
        cross = _sown(inter, f"decoder_layers_{n_dec - 1}/multihead_attn/attention_weights")[0]
        # The transformer's feature stride (8, 16 or 32 with feature_level and dilation) from
        # its token count: the padded input is a multiple of 32, so the map is exactly H/s x W/s.
        stride = int(round((x.shape[1] * x.shape[2] / cross.shape[-1]) ** 0.5))
        fh, fw = x.shape[1] // stride, x.shape[2] // stride
        if fh * fw != cross.shape[-1]:
            raise ValueError(f"cannot lay {cross.shape[-1]} attention tokens out on the "
                             f"{x.shape[1]}x{x.shape[2]} input's feature grid")
        real_h, real_w = -(-rh // stride), -(-rw // stride)
        cross = cross.reshape(-1, fh, fw)[keep][:, :real_h, :real_w]
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
            "scores": scores[keep],
            "labels": labels[keep],
            "boxes": xyxy,
            "queries": keep,
            "cross_attention": cross,
            "encoder_attention": enc,
            "point": point,
        }
