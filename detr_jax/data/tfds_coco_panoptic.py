"""COCO 2017 panoptic through TFDS (``coco/2017_panoptic``): examples -> panoptic samples.

TFDS 4.9's ``coco/2017_panoptic`` features: ``image`` (JPEG), ``image/id``, ``panoptic_image``
(the PNG: segment id = R + 256 G + 256^2 B per pixel, 0 = VOID) and ``panoptic_objects``, a
sequence of {``id`` (the segment id in the PNG), ``label`` (ClassLabel of 133: the panoptic
JSON's categories in order, i.e. the 80 things by id, then the 53 stuff by id), ``is_crowd``,
``bbox`` [ymin, xmin, ymax, xmax] fractions, ``area``}.

Samples follow docs/interfaces.md "Segmentation" (as detr_jax/data/coco_panoptic.py's, whose
:func:`segments_to_sample` builds them): one mask per object (its PNG pixels), ``boxes`` the
masks' bboxes (xyxy pixels), ``is_thing``, ``iscrowd`` (crowd segments stay in the sample; the
batching leaves them out of the training targets), ``panoptic`` {ids, segments}.  Labels are the
TFDS label (0..79 things, 80..132 stuff; contiguous); ``category_ids[label]`` is the COCO
panoptic category id.  Objects whose label is outside the 133 or whose id has no pixel are
dropped; PNG ids no object declares become VOID.  The reading, sharding and transforms are
:class:`detr_jax.data.tfds_coco.TfdsCocoDataset`'s.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from PIL import Image

from detr_jax.data.coco_panoptic import segments_to_sample
from detr_jax.data.tfds_coco import COCO_CATEGORY_IDS, COCO_NAMES, TfdsCocoDataset
from detr_jax.ops.panoptic_ids import rgb_to_id

_log = logging.getLogger(__name__)

MASK_DATASETS = ("coco/2017_panoptic",)  # TFDS names whose examples carry masks

STUFF_CATEGORIES: tuple[tuple[int, str], ...] = (
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"),
    (109, "curtain"), (112, "door-stuff"), (118, "floor-wood"), (119, "flower"),
    (122, "fruit"), (125, "gravel"), (128, "house"), (130, "light"), (133, "mirror-stuff"),
    (138, "net"), (141, "pillow"), (144, "platform"), (145, "playingfield"),
    (147, "railroad"), (148, "river"), (149, "road"), (151, "roof"), (154, "sand"),
    (155, "sea"), (156, "shelf"), (159, "snow"), (161, "stairs"), (166, "tent"),
    (168, "towel"), (171, "wall-brick"), (175, "wall-stone"), (176, "wall-tile"),
    (177, "wall-wood"), (178, "water-other"), (180, "window-blind"), (181, "window-other"),
    (184, "tree-merged"), (185, "fence-merged"), (186, "ceiling-merged"),
    (187, "sky-other-merged"), (188, "cabinet-merged"), (189, "table-merged"),
    (190, "floor-other-merged"), (191, "pavement-merged"), (192, "mountain-merged"),
    (193, "grass-merged"), (194, "dirt-merged"), (195, "paper-merged"),
    (196, "food-other-merged"), (197, "building-other-merged"), (198, "rock-merged"),
    (199, "wall-other-merged"), (200, "rug-merged"),
)
PANOPTIC_CATEGORY_IDS: tuple[int, ...] = COCO_CATEGORY_IDS + tuple(i for i, _ in STUFF_CATEGORIES)
PANOPTIC_NAMES: tuple[str, ...] = COCO_NAMES + tuple(n for _, n in STUFF_CATEGORIES)
PANOPTIC_IS_THING: tuple[bool, ...] = (True,) * len(COCO_CATEGORY_IDS) + (False,) * len(
    STUFF_CATEGORIES)
NUM_PANOPTIC_CLASSES = len(PANOPTIC_CATEGORY_IDS)  # 133
_LABEL_OF = {cid: k for k, cid in enumerate(PANOPTIC_CATEGORY_IDS)}


def _rgb(image: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image.astype(np.uint8)


def panoptic_example_to_sample(ex: dict) -> dict:
    """A ``coco/2017_panoptic`` example (numpy, as ``tfds.as_numpy`` gives it) -> panoptic
    sample (module docstring).  Object fields of unequal length are cut to the shortest; a
    panoptic PNG of another size than the image is resized to it (nearest) with a warning."""
    image = _rgb(ex["image"])
    iid = int(ex["image/id"])
    h, w = image.shape[:2]
    pan = _rgb(ex["panoptic_image"])
    if pan.shape[:2] != (h, w):
        _log.warning("tfds image %d: panoptic_image %s differs from the image's %s; resized "
                     "(nearest)", iid, pan.shape[:2], (h, w))
        pan = np.asarray(Image.fromarray(pan).resize((w, h), Image.Resampling.NEAREST))
    obj = ex["panoptic_objects"]
    n = min(len(obj["id"]), len(obj["label"]), len(obj["is_crowd"]))
    ids = np.asarray(obj["id"], np.int64).reshape(-1)[:n]
    labels = np.asarray(obj["label"], np.int64).reshape(-1)[:n]
    crowd = np.asarray(obj["is_crowd"], bool).reshape(-1)[:n]
    segments = [{"id": int(i), "category_id": PANOPTIC_CATEGORY_IDS[int(lab)], "iscrowd": bool(c)}
                for i, lab, c in zip(ids, labels, crowd, strict=True)
                if 0 <= lab < NUM_PANOPTIC_CLASSES and i > 0]
    sample = segments_to_sample(rgb_to_id(pan), segments, _LABEL_OF, PANOPTIC_IS_THING,
                                f"tfds image {iid}")
    sample.update(image=image, image_id=iid, orig_size=np.array([h, w], np.int32))
    return sample


class TfdsCocoPanopticDataset(TfdsCocoDataset):
    """``coco/2017_panoptic`` from TFDS: the detection dataset's streams over panoptic samples
    (133 contiguous labels, ``is_thing`` per label)."""

    _to_sample = staticmethod(panoptic_example_to_sample)

    def __init__(self, data_dir: str = "", **kwargs: Any):
        kwargs.setdefault("name", MASK_DATASETS[0])
        super().__init__(data_dir, **kwargs)
        self.class_names = PANOPTIC_NAMES
        self.category_ids = PANOPTIC_CATEGORY_IDS
        self.num_classes = NUM_PANOPTIC_CLASSES
        self.is_thing = PANOPTIC_IS_THING

    def coco_ground_truth(self) -> dict:
        """Instance ground truth of the validation things: the official annotations file when
        configured (restricted to the first ``num_val`` images), else one built from the
        panoptic PNGs (RLE segmentations, crowd flags, thing categories only)."""
        from detr_jax.data.panoptic_export import things_ground_truth

        examples = self._examples(self.val_split, shuffle=False, repeat=False, take=self.num_val)
        samples, seen = [], set()
        for ex in examples:
            iid = int(ex["image/id"])
            if iid in seen:
                _log.warning("validation image id %d appears twice; keeping the first", iid)
                continue
            seen.add(iid)
            if not self.annotations_file:
                samples.append(panoptic_example_to_sample(ex))
        if self.annotations_file:
            with open(self.annotations_file) as f:
                gt = json.load(f)
            gt["images"] = [im for im in gt["images"] if im["id"] in seen]
            gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in seen]
            return gt
        gt = things_ground_truth(samples, self.class_names, self.category_ids, self.is_thing)
        gt["info"] = {"description": f"built from tfds {self.val_split} panoptic PNGs"}
        return gt
