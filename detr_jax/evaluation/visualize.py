"""Draw detections and ground truth on images (PIL), tile images, save PNGs.

All boxes given to :func:`draw_detections` are xyxy in *pixels of the image passed in*
(if you draw on a resized image, scale the boxes to it first; ``postprocess`` returns
boxes in original-image pixels, which match the original, un-resized image).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detr_jax.core import fileio

_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)
_GT_COLOUR = (255, 255, 255)
_MIN_SIDE = 256
_MAX_SIDE = 2048


def class_colour(label: int) -> tuple[int, int, int]:
    """RGB colour used for contiguous label ``label``."""
    return _PALETTE[int(label) % len(_PALETTE)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # old Pillow or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _upscale_factor(h: int, w: int) -> int:
    """Integer factor bringing the shorter side to >= 256 px, longer side <= 2048 px."""
    if min(h, w) >= _MIN_SIDE:
        return 1
    factor = math.ceil(_MIN_SIDE / max(min(h, w), 1))
    return max(1, min(factor, _MAX_SIDE // max(h, w, 1)))


def _dashed_rect(draw: ImageDraw.ImageDraw, box: Sequence[float], colour, dash: int) -> None:
    x0, y0, x1, y1 = box
    for (ax, ay), (bx, by) in (
        ((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0)),
    ):
        length = math.hypot(bx - ax, by - ay)
        n = max(1, int(length // dash))
        for i in range(0, n, 2):
            t0, t1 = i / n, min(i + 1, n) / n
            start = (ax + (bx - ax) * t0, ay + (by - ay) * t0)
            end = (ax + (bx - ax) * t1, ay + (by - ay) * t1)
            draw.line([start, end], fill=colour, width=1)


def draw_detections(
    image: np.ndarray,
    pred_boxes: np.ndarray,
    pred_labels: np.ndarray,
    pred_scores: np.ndarray,
    class_names: Sequence[str],
    *,
    gt_boxes: np.ndarray | None = None,
    gt_labels: np.ndarray | None = None,
    score_threshold: float = 0.5,
) -> np.ndarray:
    """Draw predictions (and optionally ground truth) on a copy of ``image``.

    Args:
      image: uint8 [H, W, 3].
      pred_boxes: float [K, 4], xyxy pixels of ``image``.
      pred_labels: int [K], contiguous labels (index into ``class_names``).
      pred_scores: float [K]; only predictions with ``score >= score_threshold`` are drawn,
        as a box in the class colour with a "name score" tag.
      class_names: name of each contiguous label.
      gt_boxes: optional float [G, 4], xyxy pixels of ``image``, drawn as thin dashed
        white outlines (under the predictions).
      gt_labels: optional int [G]; accepted for symmetry, GT boxes are not labelled.
      score_threshold: minimum score of a drawn prediction.

    Returns:
      uint8 [H * s, W * s, 3], where the integer ``s >= 1`` upscales small images so that
      the shorter side is at least 256 px (text stays readable).
    """
    del gt_labels  # GT is drawn as outlines only
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected [H, W, 3] image, got {image.shape}")
    h, w = image.shape[:2]
    s = _upscale_factor(h, w)
    pil = Image.fromarray(image.astype(np.uint8))
    if s > 1:
        pil = pil.resize((w * s, h * s), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(pil)
    font = _font(12)
    line_w = 2

    if gt_boxes is not None:
        for box in np.asarray(gt_boxes, np.float64).reshape(-1, 4) * s:
            if np.all(np.isfinite(box)):
                _dashed_rect(draw, box.tolist(), _GT_COLOUR, dash=6)

    boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4) * s
    labels = np.asarray(pred_labels).reshape(-1)
    scores = np.asarray(pred_scores, np.float64).reshape(-1)
    order = np.argsort(scores, kind="stable")  # best drawn last (on top)
    for i in order:
        if scores[i] < score_threshold or not np.all(np.isfinite(boxes[i])):
            continue
        x0, y0, x1, y1 = boxes[i].tolist()
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        colour = class_colour(int(labels[i]))
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line_w)
        label = int(labels[i])
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = f"{name} {scores[i]:.2f}"
        tx, ty = max(x0, 0.0), max(y0 - 14, 0.0)
        left, top, right, bottom = draw.textbbox((tx, ty), text, font=font)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=colour)
        text_fill = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((tx, ty), text, fill=text_fill, font=font)
    return np.asarray(pil, dtype=np.uint8)


def image_grid(images: Sequence[np.ndarray], cols: int) -> np.ndarray:
    """Tile uint8 [H_i, W_i, 3] images row-major into a grid.

    Each cell is max(H_i) x max(W_i); smaller images sit top-left, padded with black.
    Returns uint8 [rows * Hmax, cols' * Wmax, 3], rows = ceil(n / cols'),
    cols' = min(cols, n).
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if cols < 1:
        raise ValueError("cols must be >= 1")
    arrays = [np.asarray(im, dtype=np.uint8) for im in images]
    n = len(arrays)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    hmax = max(a.shape[0] for a in arrays)
    wmax = max(a.shape[1] for a in arrays)
    grid = np.zeros((rows * hmax, cols * wmax, 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        r, c = divmod(i, cols)
        grid[r * hmax : r * hmax + a.shape[0], c * wmax : c * wmax + a.shape[1]] = a
    return grid


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a uint8 [H, W, 3] (or [H, W]) array as PNG, creating parent folders."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        fileio.makedirs(parent)
    with fileio.open_file(path, "wb") as f:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(f, format="PNG")
