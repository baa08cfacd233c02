"""Image file decoding for the COCO-JSON loader: any PIL format/mode -> uint8 RGB [H, W, 3].

JPEG and PNG (and whatever else Pillow reads); grayscale (L, 1, and 16-bit I;16 scaled to
0..255), palette, RGBA/LA (alpha dropped, as Pillow's ``convert("RGB")`` does), CMYK (Pillow's
conversion).

EXIF orientation: the image is rotated to its displayed orientation (``ImageOps.exif_transpose``)
unless the annotation file's declared (width, height) matches the *stored* pixels but not the
displayed ones (a 90-degree orientation on a non-square image), in which case the boxes were drawn
on the stored pixels and the image is left as stored.  A corrupt or truncated file raises
:class:`CorruptImageError`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

_ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION_TAG = 0x0112


class CorruptImageError(ValueError):
    """An image file that cannot be decoded completely."""


def load_rgb(path: str, expected_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``path`` to uint8 [H, W, 3] RGB (see the module docstring for modes and EXIF).

    ``expected_wh``: the (width, height) declared by the annotation file, used only to decide
    whether the EXIF orientation applies.  Raises CorruptImageError on undecodable data.
    """
    try:
        with Image.open(path) as im:
            im.load()  # raises on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES is False)
            orientation = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
            stored_wh = im.size
            if orientation != 1:
                rotates = orientation in _ROTATING_ORIENTATIONS
                shown_wh = stored_wh[::-1] if rotates else stored_wh
                on_stored = (
                    expected_wh is not None
                    and tuple(expected_wh) == tuple(stored_wh)
                    and tuple(expected_wh) != tuple(shown_wh)
                )
                if not on_stored:
                    im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise CorruptImageError(f"{path}: {type(e).__name__}: {e}") from e
    return rgb


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        peak = max(float(a.max()), 1.0)
        g = np.clip(a * (255.0 / (65535.0 if peak > 255 else 255.0)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()
