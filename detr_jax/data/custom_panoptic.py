"""A COCO panoptic dataset on disk (panoptic JSON + PNG folder + image folder), train and val.

The COCO-JSON dataset's streams, sharding, transforms and corrupt-image handling
(:class:`detr_jax.data.custom.CocoJsonDataset`) over panoptic records
(detr_jax/data/coco_panoptic.py): samples always carry ``masks``, ``is_thing``, ``iscrowd`` and
``panoptic`` (the PNG is needed for the boxes too); ``with_masks`` only decides whether batches
carry the masks.  Labels: things first, then stuff (``is_thing[label]``).  ``config.dataset =
"custom"`` with ``custom.train_panoptic_masks`` / ``custom.val_panoptic_masks`` (the PNG folders)
set builds this dataset from ``custom.train_annotations`` (a panoptic JSON) etc.
"""

from __future__ import annotations

from typing import Any

from detr_jax.data.coco_json import DataError
from detr_jax.data.coco_panoptic import (
    PanopticIndex,
    PanopticRecord,
    load_coco_panoptic,
    panoptic_sample,
)
from detr_jax.data.custom import CocoJsonDataset
from detr_jax.data.image_io import CorruptImageError


class CocoPanopticDataset(CocoJsonDataset):
    """Train stream + validation set read from COCO panoptic files (module docstring)."""

    def __init__(
        self,
        train_annotations: str,
        train_panoptic_masks: str,
        train_images: str,
        val_annotations: str,
        val_panoptic_masks: str,
        val_images: str,
        **kwargs: Any,
    ):
        if kwargs.pop("label_mode", "contiguous") != "contiguous":
            raise ValueError("panoptic datasets use contiguous labels (things, then stuff)")
        self._png_dirs = (train_panoptic_masks, val_panoptic_masks)
        self._gt: dict | None = None
        super().__init__(train_annotations, train_images, val_annotations, val_images, **kwargs)

    def _load_indexes(self, train_annotations: str, train_images: str, val_annotations: str,
                      val_images: str, label_mode: str) -> tuple[PanopticIndex, PanopticIndex]:
        train = load_coco_panoptic(train_annotations, self._png_dirs[0], train_images)
        cats = (train.category_ids, train.class_names, train.is_thing, train.label_of)
        val = load_coco_panoptic(val_annotations, self._png_dirs[1], val_images, categories=cats)
        if not val.records:
            raise DataError(f"{val_annotations}: no annotated images")
        return train, val

    @property
    def is_thing(self) -> tuple[bool, ...]:
        return self.train.is_thing

    def raw_sample(self, rec: PanopticRecord) -> dict:  # type: ignore[override]
        """The untransformed panoptic sample of a record; raises CorruptImageError (counted and
        logged) for an undecodable image."""
        if rec.path in self._bad_files:
            raise CorruptImageError(rec.path)
        try:
            return panoptic_sample(rec, self.train)
        except CorruptImageError as e:
            self._mark_bad(rec, e)  # type: ignore[arg-type]
            raise

    def coco_ground_truth(self) -> dict:
        """Instance ground truth of the validation things (RLE segmentations, crowd flags,
        thing categories only), built from the PNGs once."""
        if self._gt is None:
            from detr_jax.data.panoptic_export import things_ground_truth

            samples = (self.raw_sample(r) for r in self._val_records())
            self._gt = things_ground_truth(samples, self.class_names, self.category_ids,
                                           self.is_thing)
        return self._gt
