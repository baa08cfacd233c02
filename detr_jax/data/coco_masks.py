"""COCO ``segmentation`` fields -> bool masks, with a cheap structural check for load time.

A segmentation is one of (COCO's three forms; pycocotools decodes them):

- polygons: a list of lists ``[x0, y0, x1, y1, ...]`` in pixels (several parts merged);
- uncompressed RLE: ``{"size": [h, w], "counts": [int, ...]}`` (column-major run lengths, the
  form of COCO's ``iscrowd=1`` annotations);
- compressed RLE: ``{"size": [h, w], "counts": "<COCO's ASCII string>"}``.

:func:`segmentation_problem` checks one without rasterising it (at load time, for every
annotation): polygons need an even number (>= 6) of finite numbers, an RLE's ``size`` must be the
image's ``[height, width]`` and its runs must add up to ``height * width`` (a compressed string's
runs are read from the string).  :func:`decode_segmentation` rasterises a checked one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def rle_string_runs(counts: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString`` format: each
    run a little-endian group of 5-bit digits offset by 48, the 0x20 bit continuing the group,
    a sign bit in the last digit; from the third run on, each is stored relative to the run
    two before).  Raises ValueError on a character outside the format's range."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("the string ends inside a run")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} is not in COCO's RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def segmentation_problem(segm: Any, height: int, width: int) -> str | None:
    """Why ``segm`` cannot be decoded as a mask of a ``height`` x ``width`` image (None if it
    can); see the module docstring for the checks."""
    if isinstance(segm, list):
        if not segm:
            return "segmentation is an empty polygon list"
        for j, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return f"segmentation polygon {j} is not a list of finite numbers"
            if len(poly) % 2:
                return f"segmentation polygon {j} has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"segmentation polygon {j} has {len(poly) // 2} points (need >= 3)"
        return None
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = segm["size"]
        if not (isinstance(size, list | tuple) and [int(v) for v in size] == [height, width]):
            return (f"RLE size {size!r} does not match the image's [height, width] = "
                    f"[{height}, {width}]")
        counts = segm["counts"]
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in counts):
                return "uncompressed RLE counts must be non-negative integers"
            runs = counts
        elif isinstance(counts, str | bytes):
            try:
                runs = rle_string_runs(counts.decode("ascii") if isinstance(counts, bytes)
                                       else counts)
            except (ValueError, UnicodeDecodeError) as e:
                return f"compressed RLE counts are malformed ({e})"
            if any(r < 0 for r in runs):
                return "compressed RLE counts decode to a negative run"
        else:
            return f"RLE counts must be a list or a string, got {type(counts).__name__}"
        if sum(runs) != height * width:
            return (f"RLE runs add up to {sum(runs)} pixels, not height * width = "
                    f"{height * width}")
        return None
    return ("segmentation must be a list of polygons or an RLE {'size', 'counts'}, got "
            f"{type(segm).__name__}")


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A checked segmentation (``segmentation_problem`` is None) -> bool [height, width]."""
    from pycocotools import mask as mask_util

    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    elif isinstance(segm["counts"], list):
        rle = mask_util.frPyObjects(segm, height, width)  # uncompressed -> compressed
    else:
        counts = segm["counts"]
        rle = {"size": [height, width],
               "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_util.decode(rle).astype(bool)


def decode_masks(segms: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Checked segmentations [N] -> bool [N, height, width]."""
    if not segms:
        return np.zeros((0, height, width), bool)
    return np.stack([decode_segmentation(s, height, width) for s in segms])
