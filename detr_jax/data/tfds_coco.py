"""COCO 2017 through TFDS (``coco/2017``, tf.data).  The only module that imports TensorFlow.

Samples follow docs/interfaces.md.  Labels follow DETR: ``num_classes = 91`` and the label *is*
the original COCO category id (1..90; the 11 unused ids and 0 are named ``"N/A"``), so
``category_ids = range(91)`` and predictions carry the real ids.  TFDS stores the label as an index
into the 80 used categories; :data:`COCO_CATEGORY_IDS` maps it back.  Crowd annotations
(``is_crowd``) are kept out of the training targets.

Reading: tf.data decodes the JPEGs (TFDS' reader, in TF's threads); the numpy DETR transforms run
in ``num_workers`` Python threads, in order.  Training reads ``tfds.even_splits(split, n)[p]`` in
process ``p`` of ``n`` (per-host sharding), file order and a ``shuffle_buffer`` shuffle seeded by
``seed``, repeated forever; resuming skips the samples already seen.  The order is deterministic
for a given (seed, process count).  A record whose image fails to decode is skipped by
``ignore_errors`` (logged by tf.data).  Object fields whose lengths disagree (TFDS' mock data does
this) are cut to the shortest.

Evaluation ground truth: the official ``instances_val2017.json`` when ``eval.annotations_file``
is set, otherwise one built from the TFDS split (:meth:`TfdsCocoDataset.coco_ground_truth`).  The
built one differs from the official file: TFDS stores ``area`` as an integer (the official float
segmentation area, truncated) and boxes as float32 fractions of the image (a rounding error of
about 1e-4 px), so the small/medium/large split (APs/APm/APl) and, very slightly, AP differ.
Official numbers need the official file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from detr_jax.data.coco_json import DataError
from detr_jax.data.custom import _ordered_map
from detr_jax.data.transforms import TransformConfig, detr_eval_transform, detr_train_transform

_log = logging.getLogger(__name__)

# COCO category id of each of TFDS' 80 labels (the ids used in instances_*.json).
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90,
)
COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
NUM_CLASSES = 91


def record_objects(ex: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A TFDS example (numpy) -> (image uint8 [H, W, 3], boxes float32 [N, 4] xyxy pixels,
    category ids int32 [N], crowd bool [N], area float32 [N]), crowd included.

    ``ex['objects']['bbox']`` is [ymin, xmin, ymax, xmax] in fractions of the image.  Fields of
    unequal length are cut to the shortest; labels outside the 80 known ones are dropped.
    """
    image = np.asarray(ex["image"])
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    h, w = image.shape[:2]
    obj = ex["objects"]
    n = min(len(obj["bbox"]), len(obj["label"]), len(obj["is_crowd"]), len(obj["area"]))
    bbox = np.asarray(obj["bbox"], np.float32).reshape(-1, 4)[:n]
    label = np.asarray(obj["label"], np.int64).reshape(-1)[:n]
    boxes = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], axis=1)
    known = (label >= 0) & (label < len(COCO_CATEGORY_IDS))
    cats = np.asarray(COCO_CATEGORY_IDS, np.int32)[label[known]]
    crowd = np.asarray(obj["is_crowd"], bool).reshape(-1)[:n][known]
    area = np.asarray(obj["area"], np.float32).reshape(-1)[:n][known]
    return image.astype(np.uint8), boxes[known].astype(np.float32), cats, crowd, area


def record_to_sample(ex: dict) -> dict:
    """A TFDS example -> sample (docs/interfaces.md) with crowd boxes left out; the labels are
    COCO category ids."""
    image, boxes, cats, crowd, _ = record_objects(ex)
    return {
        "image": image,
        "boxes": boxes[~crowd],
        "labels": cats[~crowd],
        "image_id": int(ex["image/id"]),
        "orig_size": np.array(image.shape[:2], np.int32),
    }


def check_prepared(name: str, data_dir: str) -> None:
    """Raises DataError with the `tfds build` command when ``name`` is not prepared."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
        raise DataError(
            f"{name} is not prepared under coco.data_dir={data_dir!r} (looked in "
            f"{builder.data_dir}); prepare it once with `tfds build {name} --data_dir=DIR` "
            "(downloads about 25 GB) and pass --config.coco.data_dir=DIR"
        )


class TfdsCocoDataset:
    """COCO 2017 from TFDS; exposes the dataset interface of ``detr_jax.data``."""

    # TFDS example (numpy) -> untransformed sample; the panoptic variant maps its own features.
    _to_sample = staticmethod(record_to_sample)

    def __init__(
        self,
        data_dir: str = "",
        *,
        seed: int = 0,
        transforms: TransformConfig | None = None,
        train_split: str = "train",
        val_split: str = "validation",
        annotations_file: str = "",
        max_val_images: int = 0,
        shuffle_buffer: int = 1000,
        num_workers: int = 4,
        name: str = "coco/2017",
        augment: Any = None,
    ):
        import tensorflow_datasets as tfds

        self._builder = tfds.builder(name, data_dir=data_dir or None)
        self.seed = seed
        self.transforms = transforms if transforms is not None else TransformConfig()
        self.train_split, self.val_split = train_split, val_split
        self.annotations_file = annotations_file
        self.shuffle_buffer = shuffle_buffer
        self.num_workers = max(1, num_workers)
        self.augment = augment  # (sample, rng, other) -> sample, see detr_jax.data.augment
        try:
            n_val = self._builder.info.splits[val_split].num_examples
        except KeyError:  # no split metadata (e.g. tfds.testing.mock_data): count the records
            n_val = sum(1 for _ in self._examples(val_split, shuffle=False, repeat=False,
                                                  take=max_val_images or -1))
        self.num_val = min(n_val, max_val_images) if max_val_images > 0 else n_val
        names = dict(zip(COCO_CATEGORY_IDS, COCO_NAMES, strict=True))
        self.class_names = tuple(names.get(i, "N/A") for i in range(NUM_CLASSES))
        self.category_ids = tuple(range(NUM_CLASSES))
        self.num_classes = NUM_CLASSES

    # -- tf.data -------------------------------------------------------------------------
    def _examples(self, split: Any, *, shuffle: bool, repeat: bool, skip: int = 0,
                  take: int = -1) -> Iterator[dict]:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        read = tfds.ReadConfig(shuffle_seed=self.seed, try_autocache=False)
        ds = self._builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read)
        opts = tf.data.Options()
        opts.deterministic = True
        ds = ds.with_options(opts)
        if repeat:
            ds = ds.repeat()
        if shuffle:
            ds = ds.shuffle(self.shuffle_buffer, seed=self.seed, reshuffle_each_iteration=True)
        if skip:
            ds = ds.skip(skip)
        if take >= 0:
            ds = ds.take(take)
        ds = ds.ignore_errors(log_warning=True).prefetch(tf.data.AUTOTUNE)
        return iter(tfds.as_numpy(ds))

    # -- training ------------------------------------------------------------------------
    def train_samples(
        self, start_index: int = 0, process_index: int = 0, process_count: int = 1
    ) -> Iterator[dict]:
        """Infinite iterator over this process's shard, transformed; resumes after
        ``start_index`` global samples (``start_index // process_count`` of this shard)."""
        import tensorflow_datasets as tfds

        split = tfds.even_splits(self.train_split, process_count)[process_index]
        local_start = start_index // process_count
        # One record before the start is read too: it is the first Mixup/CutMix partner, as in
        # the uninterrupted stream.
        examples = self._examples(split, shuffle=True, repeat=True, skip=max(local_start - 1, 0))

        def items():
            prev = next(examples) if local_start > 0 else None  # Mixup/CutMix partner
            for k, ex in enumerate(examples, start=local_start):
                yield k * process_count + process_index, ex, prev if prev is not None else ex
                prev = ex

        def transform(item: tuple[int, dict, dict]) -> dict:
            index, ex, prev = item
            rng = np.random.default_rng([self.seed, index, 12])
            sample = self._to_sample(ex)
            if self.augment is not None:
                sample = self.augment(sample, rng, lambda: self._to_sample(prev))
            return detr_train_transform(sample, self.transforms, rng)

        return _ordered_map(transform, items(), self.num_workers)

    # -- evaluation ----------------------------------------------------------------------
    def val_samples(self) -> _StreamedSamples:
        """The first ``num_val`` validation samples (eval transform), streamed from disk on each
        pass (nothing is held in memory); ``[p::n]`` streams every n-th one."""
        def stream(start: int, step: int) -> Iterator[dict]:
            it = self._examples(self.val_split, shuffle=False, repeat=False, take=self.num_val)
            for j, ex in enumerate(it):
                if j >= start and (j - start) % step == 0:
                    yield detr_eval_transform(self._to_sample(ex), self.transforms)

        return _StreamedSamples(stream, self.num_val)

    def coco_ground_truth(self) -> dict:
        """The official annotations file when configured (restricted to the first ``num_val``
        images), else a ground truth built from the TFDS split (module docstring: areas)."""
        ids: list[int] = []
        gt_images: list[dict] = []
        anns: list[dict] = []
        seen: set[int] = set()
        for ex in self._examples(self.val_split, shuffle=False, repeat=False, take=self.num_val):
            image, boxes, cats, crowd, area = record_objects(ex)
            iid = int(ex["image/id"])
            if iid in seen:
                _log.warning("validation image id %d appears twice; keeping the first", iid)
                continue
            seen.add(iid)
            ids.append(iid)
            gt_images.append({"id": iid, "height": image.shape[0], "width": image.shape[1]})
            for box, cid, c, a in zip(boxes, cats, crowd, area, strict=True):
                x0, y0, x1, y1 = (float(v) for v in box)
                if x1 <= x0 or y1 <= y0:
                    continue
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": int(cid),
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(a),
                             "iscrowd": int(c)})
        if self.annotations_file:
            with open(self.annotations_file) as f:
                gt = json.load(f)
            keep = set(ids)
            gt["images"] = [im for im in gt["images"] if im["id"] in keep]
            gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
            return gt
        categories = [{"id": cid, "name": name, "supercategory": ""}
                      for cid, name in zip(COCO_CATEGORY_IDS, COCO_NAMES, strict=True)]
        return {"info": {"description": f"built from tfds {self.val_split}"}, "licenses": [],
                "images": gt_images, "annotations": anns, "categories": categories}


class _StreamedSamples(Sequence):
    """A sequence of samples read by ``stream(start, step)``; slices with a step stay streamed."""

    def __init__(self, stream: Callable[[int, int], Iterator[dict]], length: int,
                 start: int = 0, step: int = 1):
        self._stream, self._len, self._start, self._step = stream, length, start, step

    def __len__(self) -> int:
        return max(0, -(-(self._len - self._start) // self._step))

    def __iter__(self) -> Iterator[dict]:
        return self._stream(self._start, self._step)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if stop < len(self):  # a prefix (used for drawing): materialise it
                out = []
                for k, sample in enumerate(self):
                    if k >= stop:
                        break
                    if k >= start and (k - start) % step == 0:
                        out.append(sample)
                return out
            return _StreamedSamples(self._stream, self._len, self._start + start * self._step,
                                    self._step * step)
        for k, s in enumerate(self):
            if k == i:
                return s
        raise IndexError(i)
