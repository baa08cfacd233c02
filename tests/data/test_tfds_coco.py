"""COCO 2017 through TFDS, on tfds.testing.mock_data (random records, no download)."""

from __future__ import annotations

import contextlib
import io
import json
from unittest import mock as _mock

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from detr_jax.data.tfds_coco import (  # noqa: E402
    COCO_CATEGORY_IDS,
    NUM_CLASSES,
    TfdsCocoDataset,
    record_objects,
    record_to_sample,
)
from detr_jax.data.transforms import TransformConfig  # noqa: E402

SMALL = TransformConfig(scales=(32, 48), max_size=64, select_scales=(32, 40), crop_min=16,
                        crop_max=32, eval_size=48)


def _example(n_bbox, n_label, n_crowd, n_area, h=20, w=40):
    return {
        "image": np.zeros((h, w, 3), np.uint8),
        "image/id": 5,
        "objects": {
            "bbox": np.tile(np.array([[0.1, 0.25, 0.5, 0.75]], np.float32), (n_bbox, 1)),
            "label": np.array([0, 79, 11, 80, 3][:n_label], np.int64),
            "is_crowd": np.array([False, True, False, False, False][:n_crowd]),
            "area": np.arange(n_area, dtype=np.int64),
        },
    }


def test_record_objects_cuts_to_shortest_and_maps_ids():
    image, boxes, cats, crowd, area = record_objects(_example(5, 4, 3, 5))
    assert image.shape == (20, 40, 3)
    # 3 objects survive the cut (is_crowd has 3); labels 0, 79, 11 -> ids 1, 90, 13
    assert cats.tolist() == [1, 90, 13] and crowd.tolist() == [False, True, False]
    np.testing.assert_allclose(boxes[0], [10, 2, 30, 10])  # [ymin,xmin,ymax,xmax] -> xyxy px
    s = record_to_sample(_example(5, 5, 5, 5))
    assert s["labels"].tolist() == [1, 13, 4]  # crowd (2nd) and unknown label 80 left out
    assert s["orig_size"].tolist() == [20, 40] and s["image_id"] == 5


@contextlib.contextmanager
def mock_coco(data_dir, num_examples=6, **kwargs):
    """`tfds.testing.mock_data` (random records) without its process-wide file-system mock.

    mock_data's `DatasetBuilder.as_dataset` runs the real one inside `test_utils.MockFs`
    (tensorflow_datasets/testing/mocking.py, `mock_as_dataset_base`), only so that the builder's
    data directory, which does not exist, seems to. For the whole call MockFs swaps
    `etils.epath`'s backends (`gpath._PREFIX_TO_BACKEND`) and `tf.io.gfile`'s functions, in
    every thread, for ones that map each path into a temporary directory deleted on return.
    Orbax's async save thread writes `array_metadatas/process_0` through epath: a save that
    overlapped an `as_dataset` call (the evaluation opening the validation split) wrote it
    there, and the commit then failed with "No ArrayMetadata found for process_index=0".
    Here the data directory exists for real (empty) and the file system is left alone.
    """
    real_as_dataset = tfds.core.DatasetBuilder.as_dataset

    def as_dataset(self, *args, **kw):
        self.data_path.mkdir(parents=True, exist_ok=True)  # all that as_dataset checks for
        return real_as_dataset(self, *args, **kw)

    with tfds.testing.mock_data(num_examples=num_examples, data_dir=str(data_dir), **kwargs), \
            _mock.patch.object(tfds.core.DatasetBuilder, "as_dataset", as_dataset):
        yield


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    with mock_coco(tmp_path_factory.mktemp("tfds")):
        yield


def test_checkpoint_saved_while_as_dataset_runs_is_complete(tmp_path):
    """An orbax save overlapping an `as_dataset` call on the mock writes to the real disk."""
    import threading

    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    import tensorflow as tf

    from detr_jax.core import checkpointing

    inside, release = threading.Event(), threading.Event()

    def held_open(self, split, **kw):  # runs where mock_data's MockFs was active
        inside.set()
        release.wait(30)
        return tf.data.Dataset.range(1)

    manager = checkpointing.make_manager(str(tmp_path / "work"), every=1, keep=1)
    with mock_coco(tmp_path / "tfds", as_dataset_fn=held_open):
        reader = threading.Thread(
            target=lambda: tfds.builder("coco/2017").as_dataset(split="train"))
        reader.start()
        try:
            assert inside.wait(30)
            manager.save(1, args=ocp.args.Composite(
                state=ocp.args.StandardSave({"w": jnp.arange(3.0)})))
            manager.wait_until_finished()  # mock_data: "No ArrayMetadata found"
        finally:
            release.set()
            reader.join()
    assert manager.all_steps() == [1]
    # mock_data: this file (and the tree metadata) went to MockFs' deleted temporary directory
    assert (tmp_path / "work/checkpoints/1/state/array_metadatas/process_0").exists()
    restored = manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    np.testing.assert_array_equal(restored["state"]["w"], np.arange(3.0))


def test_train_stream_is_valid_deterministic_and_sharded(mock):
    ds = TfdsCocoDataset(seed=1, transforms=SMALL, shuffle_buffer=4, num_workers=2)
    assert ds.num_classes == NUM_CLASSES == 91 and ds.class_names[1] == "person"
    assert ds.class_names[12] == "N/A" and ds.category_ids[90] == 90
    it = ds.train_samples()
    a = [next(it) for _ in range(8)]
    for s in a:
        h, w = s["image"].shape[:2]
        assert s["image"].dtype == np.uint8 and max(h, w) <= 64
        assert set(s["labels"].tolist()) <= set(COCO_CATEGORY_IDS)
        b = s["boxes"]
        assert len(b) == len(s["labels"]) and np.all(np.isfinite(b))
    it2 = TfdsCocoDataset(seed=1, transforms=SMALL, shuffle_buffer=4).train_samples()
    b = [next(it2) for _ in range(8)]
    assert [s["image_id"] for s in a] == [s["image_id"] for s in b]
    np.testing.assert_array_equal(a[7]["image"], b[7]["image"])
    # Resuming after 4 global samples gives the same continuation.
    c = TfdsCocoDataset(seed=1, transforms=SMALL, shuffle_buffer=4).train_samples(start_index=4)
    assert next(c)["image_id"] == a[4]["image_id"]
    # Process p of 2 reads tfds.even_splits("train", 2)[p] (mock data ignores sub-splits, so
    # the disjointness itself is tfds' guarantee; checked here is the split that is asked for).
    for p in (0, 1):
        ds = TfdsCocoDataset(seed=1, transforms=SMALL)
        asked = []
        original = ds._examples
        ds._examples = lambda split, asked=asked, original=original, **kw: (
            asked.append((split, kw)), original(split, **kw))[1]
        next(ds.train_samples(start_index=6, process_index=p, process_count=2))
        assert asked[0][0] == tfds.even_splits("train", 2)[p]
        # 6 global samples seen = 3 of this shard; one more is read as the Mixup partner
        assert asked[0][1]["skip"] == 2


def test_val_samples_and_ground_truth_from_split(mock):
    from pycocotools.coco import COCO

    from detr_jax.evaluation.coco_eval import coco_evaluate

    ds = TfdsCocoDataset(transforms=SMALL, max_val_images=4)
    val = ds.val_samples()
    assert len(val) == 4 and len(val[1::2]) == 2
    assert [s["image_id"] for s in val[1::2]] == [s["image_id"] for s in list(val)[1::2]]
    assert len(val[:2]) == 2
    gt = ds.coco_ground_truth()
    assert len(gt["images"]) == len({s["image_id"] for s in val})
    assert {c["id"] for c in gt["categories"]} == set(COCO_CATEGORY_IDS)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    # Predicting the (non-crowd) ground truth scores AP 1 where it is defined.
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
              "score": 1.0} for a in gt["annotations"] if not a["iscrowd"]]
    if preds:
        assert coco_evaluate(gt, preds)["AP50"] == pytest.approx(1.0)


def test_official_annotations_file_restricted_to_read_images(mock, tmp_path):
    ds = TfdsCocoDataset(transforms=SMALL, max_val_images=3)
    ids = [s["image_id"] for s in ds.val_samples()]
    official = {
        "images": [{"id": i, "height": 10, "width": 10} for i in ids + [10**9]],
        "annotations": [{"id": 1, "image_id": ids[0], "category_id": 1, "bbox": [0, 0, 5, 5],
                         "area": 12.5, "iscrowd": 0},
                        {"id": 2, "image_id": 10**9, "category_id": 1, "bbox": [0, 0, 5, 5],
                         "area": 25.0, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "person"}],
    }
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(official))
    ds = TfdsCocoDataset(transforms=SMALL, max_val_images=3, annotations_file=str(path))
    gt = ds.coco_ground_truth()
    assert {im["id"] for im in gt["images"]} == set(ids)
    assert [a["area"] for a in gt["annotations"]] == [12.5]  # the file's float area is kept


def test_tensorflow_is_imported_only_by_the_tfds_pipeline():
    import subprocess
    import sys

    code = ("import sys, detr_jax.data, detr_jax.data.custom, detr_jax.losses, detr_jax.models, "
            "detr_jax.matching, detr_jax.optim; "
            "from detr_jax.config_base import base_config; "
            "import detr_jax.data.transforms; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_train_and_evaluate_on_mock_coco(tmp_path, monkeypatch):
    """The whole loop on mock coco/2017: 91 original-id labels through to predictions.json."""
    from conftest import tiny_config

    from detr_jax import train
    from detr_jax.data import tfds_coco

    monkeypatch.setattr(tfds_coco, "check_prepared", lambda name, data_dir: None)  # mock: unset

    c = tiny_config(dataset="coco", num_classes=91, total_steps=2, checkpoint_every=2,
                    log_every=1, image_buckets=[(64, 64)])
    c.transforms.scales, c.transforms.max_size = [32, 48], 64
    c.transforms.select_scales, c.transforms.crop_min, c.transforms.crop_max = [32], 16, 32
    c.transforms.eval_size = 48
    c.coco.max_val_images, c.coco.num_workers, c.coco.shuffle_buffer = 4, 2, 4
    c.max_boxes, c.model.queries.num_queries = 60, 64  # mock images carry up to ~50 objects
    with mock_coco(tmp_path / "tfds"):
        metrics = train.train_and_evaluate(c, str(tmp_path / "work"))
    assert "AP" in metrics
    preds = json.load(open(tmp_path / "work" / "predictions.json"))
    gt = json.load(open(tmp_path / "work" / "ground_truth.json"))
    # Labels are the category ids themselves (as DETR, unused ids can be predicted, never right).
    assert preds and {p["category_id"] for p in preds} <= set(range(91))
    assert {c["id"] for c in gt["categories"]} == set(COCO_CATEGORY_IDS)
    assert len(gt["images"]) <= 4
