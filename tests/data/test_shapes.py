"""Tests for the synthetic shapes dataset (detr_jax.data.shapes)."""

import itertools
import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from detr_jax.data import shapes
from detr_jax.data.shapes import STANDARD_SHAPES, ShapesDataset, ShapesSpec, generate_sample

N_STATS = 300  # samples used for distribution checks


@pytest.fixture(scope="module")
def many_samples():
    return [generate_sample(STANDARD_SHAPES, 0, i) for i in range(N_STATS)]


def _mask_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_sample_format():
    s = generate_sample(STANDARD_SHAPES, 3, 7)
    size = STANDARD_SHAPES.image_size
    n = len(s["labels"])
    assert s["image"].dtype == np.uint8 and s["image"].shape == (size, size, 3)
    assert s["boxes"].dtype == np.float32 and s["boxes"].shape == (n, 4)
    assert s["labels"].dtype == np.int32
    assert s["masks"].dtype == bool and s["masks"].shape == (n, size, size)
    assert s["image_id"] == 7 and isinstance(s["image_id"], int)
    assert s["orig_size"].dtype == np.int32 and s["orig_size"].tolist() == [size, size]


def test_deterministic():
    a = generate_sample(STANDARD_SHAPES, 5, 11)
    b = generate_sample(STANDARD_SHAPES, 5, 11)
    for k in ("image", "boxes", "labels", "masks", "orig_size"):
        np.testing.assert_array_equal(a[k], b[k])
    c = generate_sample(STANDARD_SHAPES, 5, 12)
    d = generate_sample(STANDARD_SHAPES, 6, 11)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["image"], d["image"])


def test_boxes_inside_and_tight(many_samples):
    size = STANDARD_SHAPES.image_size
    n_checked = 0
    for s in many_samples:
        boxes, masks = s["boxes"], s["masks"]
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= size)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        for i in range(len(boxes)):
            assert masks[i].any(), "every object keeps visible pixels"
            mb = _mask_box(masks[i])
            # The visible mask always lies inside the full box.
            assert np.all(mb[:2] >= boxes[i, :2]) and np.all(mb[2:] <= boxes[i, 2:])
            later = boxes[i + 1:]
            iw = np.minimum(later[:, 2], boxes[i, 2]) - np.maximum(later[:, 0], boxes[i, 0])
            ih = np.minimum(later[:, 3], boxes[i, 3]) - np.maximum(later[:, 1], boxes[i, 1])
            if not np.any((iw > 0) & (ih > 0)):  # not occluded by a later object
                np.testing.assert_allclose(mb, boxes[i], atol=1)
                n_checked += 1
    assert n_checked > N_STATS


def test_no_object_hidden(many_samples):
    spec = STANDARD_SHAPES
    for s in many_samples:
        areas = s["masks"].sum(axis=(1, 2))
        assert np.all(areas >= 20)
        # Visible masks are disjoint (occlusion resolved).
        assert s["masks"].sum(axis=0).max() <= 1
        boxes = s["boxes"]
        full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert np.all(areas <= full)
        # Pairwise box IoU is limited.
        for i, j in itertools.combinations(range(len(boxes)), 2):
            a, b = boxes[i], boxes[j]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            assert inter / (full[i] + full[j] - inter) <= spec.max_iou + 1e-6


def test_class_and_count_distribution(many_samples):
    spec = STANDARD_SHAPES
    labels = np.concatenate([s["labels"] for s in many_samples[:200]])
    assert spec.num_classes >= 4
    assert len(np.unique(labels)) >= 4
    assert labels.min() >= 0 and labels.max() < spec.num_classes
    counts = np.array([len(s["labels"]) for s in many_samples])
    assert counts.min() >= spec.min_objects and counts.max() <= spec.max_objects
    assert len(np.unique(counts)) == spec.max_objects - spec.min_objects + 1


def test_small_fraction(many_samples):
    boxes = np.concatenate([s["boxes"] for s in many_samples])
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    small = side <= 12
    assert np.all(side[small] >= 7)  # 8-12 px (a polygon may lose its apex pixel)
    assert np.all(side[~small] >= 13)
    assert side.max() <= STANDARD_SHAPES.max_size
    assert abs(small.mean() - 0.25) < 0.05, small.mean()


def _dilate(mask, r):
    out = mask.copy()
    padded = np.pad(mask, r)
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= padded[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def test_colour_contrast(many_samples):
    # An object's mean colour differs clearly from the pixels in a thin ring around it.
    dists = []
    for s in many_samples[:60]:
        img = s["image"].astype(np.float32)
        others = s["masks"].any(axis=0)
        for m in s["masks"]:
            ring = _dilate(m, 2) & ~others
            if ring.sum() >= 10:
                dists.append(np.linalg.norm(img[m].mean(axis=0) - img[ring].mean(axis=0)))
    dists = np.array(dists)
    assert len(dists) > 100
    assert dists.min() > 25 and np.percentile(dists, 5) > 70, np.percentile(dists, [0, 5, 50])


def test_spec_validation():
    with pytest.raises(ValueError):
        ShapesSpec(class_names=("circle", "hexagon"))
    with pytest.raises(ValueError):
        ShapesSpec(min_objects=5, max_objects=2)


def test_custom_spec():
    spec = ShapesSpec(image_size=64, min_objects=2, max_objects=3,
                      class_names=("circle", "square", "triangle", "cross"))
    for i in range(20):
        s = generate_sample(spec, 1, i)
        assert s["image"].shape == (64, 64, 3)
        assert 1 <= len(s["labels"]) <= 3  # placement may skip an object in a crowded image
        assert s["labels"].max() < 4


def test_dataset_train_val():
    ds = ShapesDataset(STANDARD_SHAPES, seed=3, num_val=8)
    assert ds.num_classes == len(ds.class_names) >= 4
    assert ds.category_ids == tuple(range(1, ds.num_classes + 1))
    train = list(itertools.islice(ds.train_samples(), 40))
    assert [s["image_id"] for s in train] == list(range(40))
    np.testing.assert_array_equal(train[5]["image"], generate_sample(ds.spec, 3, 5)["image"])
    val = ds.val_samples()
    assert len(val) == 8 and ds.val_samples() is val
    assert [s["image_id"] for s in val] == list(range(8))
    for v in val:
        for t in train:
            assert not np.array_equal(v["image"], t["image"])


def test_train_sharding():
    ds = ShapesDataset(seed=0, num_val=0)
    p0 = [s["image_id"] for s in itertools.islice(ds.train_samples(5, 0, 3), 4)]
    p1 = [s["image_id"] for s in itertools.islice(ds.train_samples(5, 1, 3), 4)]
    p2 = [s["image_id"] for s in itertools.islice(ds.train_samples(5, 2, 3), 4)]
    assert p0 == [6, 9, 12, 15] and p1 == [7, 10, 13, 16] and p2 == [5, 8, 11, 14]
    with pytest.raises(ValueError):
        next(ds.train_samples(0, 3, 3))


def test_export_round_trip(tmp_path, capsys):
    shapes.main(["--export", str(tmp_path), "--num-images", "5", "--seed", "4"])
    assert "5 images" in capsys.readouterr().out
    coco = COCO(str(tmp_path / "annotations.json"))
    cats = coco.loadCats(coco.getCatIds())
    assert [c["name"] for c in cats] == list(STANDARD_SHAPES.class_names)
    assert all(c["supercategory"] == "shape" for c in cats)
    assert sorted(coco.getImgIds()) == list(range(5))
    for i in range(5):
        s = generate_sample(STANDARD_SHAPES, 4, i)
        info = coco.loadImgs(i)[0]
        assert (tmp_path / "images" / info["file_name"]).exists()
        assert (info["height"], info["width"]) == s["image"].shape[:2]
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=i)), key=lambda a: a["id"])
        assert len(anns) == len(s["labels"])
        for a, box, label, m in zip(anns, s["boxes"], s["labels"], s["masks"], strict=True):
            x, y, w, h = a["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], box)
            assert a["category_id"] == label + 1 and a["iscrowd"] == 0
            assert a["area"] == m.sum()
            np.testing.assert_array_equal(mask_util.decode(a["segmentation"]).astype(bool), m)
            np.testing.assert_array_equal(coco.annToMask(a).astype(bool), m)
        from PIL import Image
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "images" / info["file_name"])), s["image"])
    json.loads((tmp_path / "annotations.json").read_text())  # plain JSON


def test_export_val_split_matches_dataset(tmp_path):
    shapes.main(["--export", str(tmp_path), "--num-images", "2", "--split", "val"])
    coco = COCO(str(tmp_path / "annotations.json"))
    val = ShapesDataset(seed=0, num_val=2).val_samples()
    for v in val:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=v["image_id"]))
        assert len(anns) == len(v["labels"])
