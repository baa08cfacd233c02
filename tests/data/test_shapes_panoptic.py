"""The synthetic panoptic dataset (detr_jax/data/shapes_panoptic.py) and its COCO export."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from detr_jax.config_validation import ConfigError, validate_config
from detr_jax.data import build_dataset, train_batches
from detr_jax.data import shapes_panoptic as sp
from detr_jax.data.coco_panoptic import load_coco_panoptic, panoptic_sample

SPEC = sp.STANDARD_PANOPTIC
T = SPEC.num_things


@pytest.fixture(scope="module")
def samples():
    return [sp.generate_panoptic_sample(SPEC, 0, i) for i in range(40)]


def test_format_and_category_space(samples):
    assert SPEC.num_classes == 11 and SPEC.class_names[T:] == sp.STUFF_NAMES
    assert SPEC.is_thing == (True,) * 6 + (False,) * 5
    for s in samples:
        n = len(s["labels"])
        assert s["image"].dtype == np.uint8 and s["image"].shape == (96, 96, 3)
        assert s["masks"].shape == (n, 96, 96) and s["masks"].dtype == bool
        assert s["boxes"].shape == (n, 4) and s["boxes"].dtype == np.float32
        np.testing.assert_array_equal(s["is_thing"], s["labels"] < T)
        assert not s["iscrowd"].any()
        stuff = s["labels"][~s["is_thing"]]
        assert len(set(stuff.tolist())) == len(stuff) and 1 <= len(stuff) <= 3  # distinct
        # things first (drawing order), then stuff by label
        assert s["is_thing"].tolist() == sorted(s["is_thing"].tolist(), reverse=True)
        assert stuff.tolist() == sorted(stuff.tolist())
    n_stuff = [int((~s["is_thing"]).sum()) for s in samples]
    assert set(n_stuff) <= {1, 2, 3} and {2, 3} <= set(n_stuff)


def test_deterministic_and_streams_differ():
    a = sp.generate_panoptic_sample(SPEC, 3, 5)
    b = sp.generate_panoptic_sample(SPEC, 3, 5)
    for k in ("image", "boxes", "labels", "masks", "is_thing"):
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["panoptic"]["ids"], b["panoptic"]["ids"])
    assert a["panoptic"]["segments"] == b["panoptic"]["segments"]
    other = sp.generate_panoptic_sample(SPEC, 3, 6)
    val = sp.generate_panoptic_sample(SPEC, 3, 5, stream=sp.VAL_STREAM)
    assert not np.array_equal(a["image"], other["image"])
    assert not np.array_equal(a["image"], val["image"])


def test_masks_partition_the_image_without_void(samples):
    for s in samples:
        np.testing.assert_array_equal(s["masks"].sum(axis=0), 1)  # one segment per pixel
        ids = s["panoptic"]["ids"]
        assert ids.dtype == np.int32 and ids.min() >= 1  # no VOID
        for k, m in enumerate(s["masks"]):
            np.testing.assert_array_equal(ids == k + 1, m)


def test_boxes_and_segments_are_the_visible_masks(samples):
    for s in samples:
        segs = s["panoptic"]["segments"]
        assert [g["id"] for g in segs] == list(range(1, len(s["labels"]) + 1))
        for box, m, label, g in zip(s["boxes"], s["masks"], s["labels"], segs, strict=True):
            rows, cols = np.where(m.any(axis=1))[0], np.where(m.any(axis=0))[0]
            np.testing.assert_array_equal(box, [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
            assert g["category_id"] == label and g["area"] == m.sum() and g["iscrowd"] == 0
            assert g["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def test_stuff_regions_get_their_texture():
    """Each stuff class has its own texture: e.g. 'wall' stripes alternate two colours, 'sky'
    varies smoothly; checked on the pixel statistics of single-class regions."""
    spec = sp.PanopticShapesSpec(things=sp.dataclasses.replace(SPEC.things, min_objects=0,
                                                                max_objects=0, noise_std=0.0))
    s = sp.generate_panoptic_sample(spec, 1, 0)
    assert s["is_thing"].sum() == 0 and s["masks"].sum(axis=0).min() == 1
    for m, label in zip(s["masks"], s["labels"], strict=True):
        name = spec.class_names[label]
        px = s["image"][m].astype(np.float32)
        if name == "sky":  # neighbouring pixels nearly equal
            img = s["image"].astype(np.float32)
            both = m[:, 1:] & m[:, :-1]
            assert np.abs(img[:, 1:] - img[:, :-1]).sum(-1)[both].mean() < 4
        elif name == "wall":  # two colours, about texture_contrast apart
            spread = np.linalg.norm(px - px.mean(0), axis=1)
            assert 15 < spread.mean() < 30


def test_dataset_build_sharding_and_batches():
    c = tiny_config(dataset="shapes_panoptic", num_classes=11)
    c.shapes.num_val = 3
    c.data.with_masks = True
    ds = build_dataset(c)
    assert isinstance(ds, sp.ShapesPanopticDataset) and ds.is_thing == SPEC.is_thing
    assert ds.category_ids == tuple(range(1, 12)) and len(ds.val_samples()) == 3
    cats = ds.panoptic_categories()
    assert [c["isthing"] for c in cats] == [1] * 6 + [0] * 5 and cats[6]["name"] == "sky"
    a = next(ds.train_samples(start_index=4, process_index=1, process_count=2))
    np.testing.assert_array_equal(a["image"], sp.generate_panoptic_sample(SPEC, 0, 5)["image"])
    batch = next(train_batches(ds, global_batch_size=2, start_step=0, buckets=[(96, 96)],
                               max_boxes=12))
    s0 = ds.train_sample(0)
    n = len(s0["labels"])
    np.testing.assert_array_equal(batch["masks"][0, :n], s0["masks"])
    np.testing.assert_array_equal(batch["is_thing"][0, :n], s0["is_thing"])
    gt = ds.coco_ground_truth()  # things only, with RLE
    assert {c["id"] for c in gt["categories"]} == set(range(1, 7))
    assert all(a["category_id"] <= 6 and "counts" in a["segmentation"]
               for a in gt["annotations"])
    validate_config(c, 1)
    with pytest.raises(ValueError, match="num_classes=6 but the shapes_panoptic dataset has 11"):
        build_dataset(tiny_config(dataset="shapes_panoptic", num_classes=6))


def test_config_checks():
    import ml_collections

    c = tiny_config(dataset="shapes_panoptic", num_classes=11)
    c.data = ml_collections.ConfigDict({"with_masks": "yes"})  # (a typed field refuses it)
    c.shapes.spec = "nope"
    with pytest.raises(ConfigError) as e:
        validate_config(c, 1)
    assert "data.with_masks='yes' must be true or false" in str(e.value)
    assert "shapes.spec='nope': choose one of ('standard', 'plain')" in str(e.value)
    c = tiny_config(dataset="coco", num_classes=91)
    c.data.with_masks = True
    with pytest.raises(ConfigError, match="coco.name='coco/2017' has no masks"):
        validate_config(c, 1)


def test_export_reloads_with_pycocotools_and_our_reader(tmp_path, capsys):
    from pycocotools.coco import COCO

    sp.main(["--export", str(tmp_path), "--num-images", "4", "--seed", "2", "--split", "val"])
    assert "wrote 4 images" in capsys.readouterr().out
    ref = [sp.generate_panoptic_sample(SPEC, 2, i, stream=sp.VAL_STREAM) for i in range(4)]
    # Instances: the things, RLE masks decoded by pycocotools itself.
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "instances.json"))
    assert sorted(coco.getCatIds()) == list(range(1, 7))
    for s in ref:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[s["image_id"]]))
        things = s["is_thing"]
        assert [a["category_id"] - 1 for a in anns] == s["labels"][things].tolist()
        for a, m in zip(anns, s["masks"][things], strict=True):
            np.testing.assert_array_equal(coco.annToMask(a).astype(bool), m)
            assert a["area"] == m.sum() and a["iscrowd"] == 0
    # Panoptic: the PNGs hold id = R + 256 G + 256^2 B; our reader gives the samples back.
    pan = json.load(open(tmp_path / "panoptic.json"))
    assert [c["isthing"] for c in pan["categories"]] == [1] * 6 + [0] * 5
    png = np.asarray(Image.open(tmp_path / "panoptic" / "000000.png")).astype(np.int64)
    np.testing.assert_array_equal(png[..., 0] + 256 * png[..., 1] + 65536 * png[..., 2],
                                  ref[0]["panoptic"]["ids"])
    index = load_coco_panoptic(str(tmp_path / "panoptic.json"), str(tmp_path / "panoptic"),
                               str(tmp_path / "images"))
    assert index.class_names == SPEC.class_names and index.is_thing == SPEC.is_thing
    for rec, s in zip(index.records, ref, strict=True):
        got = panoptic_sample(rec, index)
        for k in ("image", "boxes", "labels", "masks", "is_thing", "iscrowd"):
            np.testing.assert_array_equal(got[k], s[k], err_msg=k)
        np.testing.assert_array_equal(got["panoptic"]["ids"], s["panoptic"]["ids"])
        assert got["panoptic"]["segments"] == s["panoptic"]["segments"]
    assert sorted(os.listdir(tmp_path)) == ["images", "instances.json", "panoptic",
                                            "panoptic.json"]
