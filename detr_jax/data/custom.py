"""A COCO-format dataset on disk (annotations JSON + image folder), for train and val.

Samples follow docs/interfaces.md (``image`` uint8 [H, W, 3] after the transforms, ``boxes``
float32 [N, 4] xyxy pixels of that image, contiguous ``labels``, ``orig_size`` (h, w) as
declared by the annotations file).  ``category_ids[label]`` maps labels back to the file's
category ids, so predictions.json carries the original ids and drawn pictures the names.

Training stream: global sample ``i`` is image ``perm_e[i % N]`` of epoch ``e = i // N``, with
``perm_e`` a permutation drawn from ``(seed, e)`` and the transforms drawn from ``(seed, i)``:
a pure function of (seed, i), so a resumed run and any process count see the same samples, and
process ``p`` of ``n`` reads only the indices ``i % n == p`` (per-host sharding).  A corrupt or
truncated image is skipped (the next image of the permutation takes its place), counted and
logged with its file name, once per file.  Decoding runs in ``num_workers`` threads, in order.

``with_masks``: the annotations' segmentations are checked at load time and decoded into the
samples' ``masks`` bool [N, H, W] (detr_jax/data/coco_masks.py); off, they are never read.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from detr_jax.data.augment import AugmentFn
from detr_jax.data.coco_json import CocoRecord, DataError, load_coco_json
from detr_jax.data.image_io import CorruptImageError, load_rgb
from detr_jax.data.transforms import TransformConfig, detr_eval_transform, detr_train_transform

_log = logging.getLogger(__name__)
_PERM_STREAM, _AUG_STREAM = 11, 12



class LazySamples(Sequence):
    """A list-like view of samples decoded on access (slicing gives another view)."""

    def __init__(self, records: Sequence[CocoRecord], load: Callable[[CocoRecord], dict]):
        self._records, self._load = list(records), load

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazySamples(self._records[i], self._load)
        return self._load(self._records[i])


class CocoJsonDataset:
    """Train stream + validation set read from COCO-format files (see the module docstring)."""

    def __init__(
        self,
        train_annotations: str,
        train_images: str,
        val_annotations: str,
        val_images: str,
        *,
        seed: int = 0,
        transforms: TransformConfig | None = None,
        label_mode: str = "contiguous",
        num_workers: int = 4,
        augment: AugmentFn | None = None,
        with_masks: bool = False,
    ):
        self.with_masks = with_masks
        self.train, self.val = self._load_indexes(train_annotations, train_images,
                                                  val_annotations, val_images, label_mode)
        if not self.train.records:
            raise DataError(f"{train_annotations}: no images")
        self.seed = seed
        self.transforms = transforms if transforms is not None else TransformConfig()
        self.num_workers = max(1, int(num_workers))
        self.augment = augment
        self.counts = {"corrupt_images": 0}
        self._bad_files: set[str] = set()
        self._lock = threading.Lock()
        self._val_ok: list[CocoRecord] | None = None
        self._perms: dict[int, np.ndarray] = {}

    def _load_indexes(self, train_annotations: str, train_images: str, val_annotations: str,
                      val_images: str, label_mode: str) -> tuple[Any, Any]:
        """(train index, val index); the val file uses the train file's categories."""
        train = load_coco_json(train_annotations, train_images, label_mode=label_mode,
                               with_masks=self.with_masks)
        cats = (train.category_ids, train.class_names, train.label_of)
        val = load_coco_json(val_annotations, val_images, categories=cats,
                             with_masks=self.with_masks)
        return train, val

    @property
    def num_classes(self) -> int:
        return len(self.train.category_ids)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        return self.train.category_ids

    # -- decoding ------------------------------------------------------------------------
    def _mark_bad(self, rec: CocoRecord, err: Exception) -> None:
        with self._lock:
            if rec.path in self._bad_files:
                return
            self._bad_files.add(rec.path)
            self.counts["corrupt_images"] += 1
            n = self.counts["corrupt_images"]
        _log.warning("skipping corrupt image %s (%s); %d corrupt image(s) so far", rec.path,
                     err, n)

    def raw_sample(self, rec: CocoRecord) -> dict:
        """The untransformed sample of a record (image resized to the declared size if needed).

        Raises CorruptImageError (after counting and logging it) for an undecodable file.
        """
        if rec.path in self._bad_files:
            raise CorruptImageError(rec.path)
        try:
            image = load_rgb(rec.path, (rec.width, rec.height))
        except CorruptImageError as e:
            self._mark_bad(rec, e)
            raise
        if image.shape[:2] != (rec.height, rec.width):
            _log.warning("%s: decoded size %s differs from the declared %dx%d (w x h); resizing "
                         "to the declared size", rec.path, image.shape[1::-1], rec.width,
                         rec.height)
            image = np.asarray(Image.fromarray(image).resize((rec.width, rec.height)))
        sample = {
            "image": image,
            "boxes": rec.boxes.copy(),
            "labels": rec.labels.copy(),
            "image_id": rec.image_id,
            "orig_size": np.array([rec.height, rec.width], np.int32),
        }
        if self.with_masks:
            sample["masks"] = rec.masks()
        return sample

    # -- training ------------------------------------------------------------------------
    def _permutation(self, epoch: int) -> np.ndarray:
        """The image order of ``epoch`` (cached for the two latest epochs)."""
        with self._lock:
            perm = self._perms.get(epoch)
        if perm is None:
            n = len(self.train.records)
            perm = np.random.default_rng([self.seed, epoch, _PERM_STREAM]).permutation(n)
            with self._lock:
                self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
                self._perms[epoch] = perm
        return perm

    def _raw_at(self, index: int) -> dict:
        """Raw sample of global stream index ``index``, skipping corrupt files."""
        n = len(self.train.records)
        epoch, pos = divmod(index, n)
        perm = self._permutation(epoch)
        for k in range(n):
            rec = self.train.records[int(perm[(pos + k) % n])]
            try:
                return self.raw_sample(rec)
            except CorruptImageError:
                continue
        raise DataError("every training image is corrupt; see the warnings above")

    def train_sample(self, index: int) -> dict:
        """Global training sample ``index`` (transformed); a pure function of (seed, index)."""
        rng = np.random.default_rng([self.seed, index, _AUG_STREAM])
        sample = self._raw_at(index)
        if self.augment is not None:
            n = len(self.train.records)

            def other() -> dict:  # a second raw sample for Mixup/CutMix
                return self._raw_at(int(rng.integers(n)) + index // n * n)

            sample = self.augment(sample, rng, other)
        return detr_train_transform(sample, self.transforms, rng)

    def train_samples(
        self, start_index: int = 0, process_index: int = 0, process_count: int = 1
    ) -> Iterator[dict]:
        """Infinite iterator over this process's indices ``i >= start_index``,
        ``i % process_count == process_index``, in increasing ``i``."""
        if not 0 <= process_index < process_count:
            raise ValueError(f"need 0 <= process_index < process_count, got "
                             f"{process_index}, {process_count}")
        first = start_index + (process_index - start_index) % process_count
        indices = itertools.count(first, process_count)
        return _ordered_map(self.train_sample, indices, self.num_workers)

    # -- validation ----------------------------------------------------------------------
    def _eval_sample(self, rec: CocoRecord) -> dict:
        return detr_eval_transform(self.raw_sample(rec), self.transforms)

    def _val_records(self) -> list[CocoRecord]:
        """Validation records whose image decodes (checked once, in threads)."""
        if self._val_ok is None:
            def ok(rec: CocoRecord) -> bool:
                try:
                    load_rgb(rec.path, (rec.width, rec.height))
                    return True
                except CorruptImageError as e:
                    self._mark_bad(rec, e)
                    return False

            with ThreadPoolExecutor(self.num_workers) as pool:
                flags = list(pool.map(ok, self.val.records))
            self._val_ok = [r for r, f in zip(self.val.records, flags, strict=True) if f]
        return self._val_ok

    def val_samples(self) -> LazySamples:
        """Validation samples (eval transform), decoded on access; corrupt images left out."""
        return LazySamples(self._val_records(), self._eval_sample)

    def coco_ground_truth(self) -> dict:
        """The validation annotations (original ids, crowd, areas as in the file) for pycocotools,
        restricted to the images that decode."""
        keep = {r.image_id for r in self._val_records()}
        gt = dict(self.val.ground_truth)
        gt["images"] = [im for im in gt["images"] if im["id"] in keep]
        gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
        return gt


def _ordered_map(fn: Callable[[int], Any], items: Iterator[int], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` computed ``2 * workers`` ahead in a thread pool, results in order."""
    with ThreadPoolExecutor(workers) as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= 2 * workers:
                yield window.popleft().result()

