"""COCO-format datasets on disk: category mapping, image modes, EXIF, crowd, negatives, bad data."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from coco_fixtures import write_dataset, write_json

from detr_jax.data.coco_json import DataError, load_coco_json
from detr_jax.data.custom import CocoJsonDataset
from detr_jax.data.transforms import TransformConfig

SMALL = TransformConfig(scales=(32, 40, 48), max_size=64, select_scales=(32, 40), crop_min=24,
                        crop_max=40, eval_size=40)


@pytest.fixture()
def coco_dir(tmp_path):
    data = write_dataset(str(tmp_path))
    return str(tmp_path), data


def _ds(root, ann="annotations.json", **kw):
    a, im = os.path.join(root, ann), os.path.join(root, "images")
    tf = kw.pop("transforms", SMALL)
    return CocoJsonDataset(a, im, a, im, transforms=tf, num_workers=2, **kw)


def test_category_mapping_crowd_degenerate_clip_negatives(coco_dir):
    root, _ = coco_dir
    idx = load_coco_json(os.path.join(root, "annotations.json"), os.path.join(root, "images"))
    assert idx.category_ids == (3, 17, 42)
    assert idx.class_names == ("cat", "dog", "zebra")
    recs = {r.image_id: r for r in idx.records}
    assert sorted(recs) == [1, 2, 3, 4, 5, 6]  # image 4 has no annotations: kept as a negative
    np.testing.assert_allclose(recs[1].boxes, [[15, 10, 30, 20], [0, 0, 10, 20]])
    assert recs[1].labels.tolist() == [2, 0]  # zebra (42), cat (3); the crowd box is left out
    np.testing.assert_allclose(recs[2].boxes, [[5, 5, 25, 15], [50, 30, 60, 40]])  # clipped
    assert recs[2].labels.tolist() == [1, 2]
    assert len(recs[4].boxes) == 0
    assert idx.counts == {"degenerate": 1, "clipped": 1, "crowd": 1}
    gt_anns = {a["id"]: a for a in idx.ground_truth["annotations"]}
    assert gt_anns[3]["iscrowd"] == 1  # crowd stays in the eval ground truth (ignore region)
    assert 5 not in gt_anns and gt_anns[6]["bbox"] == [50.0, 30.0, 10.0, 10.0]
    assert all("area" in a for a in gt_anns.values())


def test_original_label_mode(coco_dir):
    root, _ = coco_dir
    idx = load_coco_json(os.path.join(root, "annotations.json"), os.path.join(root, "images"),
                         label_mode="original")
    assert len(idx.category_ids) == 43 and idx.class_names[42] == "zebra"
    assert idx.class_names[0] == "N/A"
    assert {r.image_id: r.labels.tolist() for r in idx.records}[1] == [42, 3]


def test_every_image_mode_decodes_upright(coco_dir):
    root, _ = coco_dir
    ds = _ds(root)
    for rec in ds.train.records:
        s = ds.raw_sample(rec)
        assert s["image"].dtype == np.uint8 and s["image"].shape == (40, 60, 3), rec.path
        # The white square of the pattern sits at rows 10:20, cols 15:30 (upright).
        if not rec.path.endswith(("gray.png", "i16.png")):
            assert s["image"][11:19, 16:29].mean() > 200, rec.path
        assert s["orig_size"].tolist() == [40, 60]


def test_exif_kept_when_annotations_use_stored_pixels(coco_dir):
    root, data = coco_dir
    data["images"][4].update(width=40, height=60)  # declared as stored (60 high x 40 wide)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 5]
    write_json(os.path.join(root, "stored.json"), data)
    ds = _ds(root, "stored.json")
    rec = next(r for r in ds.train.records if r.image_id == 5)
    assert ds.raw_sample(rec)["image"].shape == (60, 40, 3)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["annotations"].append(
            {"id": 99, "image_id": 77, "category_id": 3, "bbox": [0, 0, 1, 1]}),
         r"annotations\[9\] \(id=99\) refers to image_id 77"),
        (lambda d: d["annotations"].append(
            {"id": 99, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}),
         r"annotations\[9\] \(id=99\) has category_id 5, which is not declared"),
        (lambda d: d["annotations"][2].pop("bbox"), r"annotations\[2\] \(id=3\) lacks key 'bbox'"),
        (lambda d: d["images"][1].pop("file_name"), r"images\[1\] \(id=2\) lacks key 'file_name'"),
        (lambda d: d.pop("categories"), r"missing top-level key 'categories'"),
        (lambda d: d["images"].append(
            {"id": 8, "file_name": "nope.jpg", "width": 5, "height": 5}),
         r"images\[6\] \(id=8\) file not found: .*nope.jpg"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"\(id=1\) bbox must be"),
        (lambda d: d["images"][2].update(width="wide"),
         r"images\[2\] \(id=3\) has width='wide', not an integer"),
        (lambda d: d["annotations"].append(
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}),
         r"annotations\[9\] \(id=1\) repeats annotation id 1"),
    ],
)
def test_bad_records_stop_at_load_with_one_line(coco_dir, edit, message):
    root, data = coco_dir
    edit(data)
    path = write_json(os.path.join(root, "bad.json"), data)
    with pytest.raises(DataError, match=message) as e:
        load_coco_json(path, os.path.join(root, "images"))
    assert "\n" not in str(e.value) and "bad.json" in str(e.value)


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        load_coco_json(str(path), str(tmp_path))


def test_corrupt_image_skipped_counted_and_logged(coco_dir, caplog):
    root, _ = coco_dir
    path = os.path.join(root, "images", "rgb.jpg")
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) // 2])  # truncated JPEG
    ds = _ds(root)
    with caplog.at_level(logging.WARNING):
        it = ds.train_samples()
        ids = [next(it)["image_id"] for _ in range(12)]  # two epochs
        val = list(ds.val_samples())
    assert 1 not in ids and len(ids) == 12
    assert ds.counts["corrupt_images"] == 1
    assert "rgb.jpg" in caplog.text
    assert sorted(s["image_id"] for s in val) == [2, 3, 4, 5, 6]
    gt = ds.coco_ground_truth()
    assert {im["id"] for im in gt["images"]} == {2, 3, 4, 5, 6}
    assert all(a["image_id"] != 1 for a in gt["annotations"])


def test_train_stream_pure_function_of_seed_and_sharded(coco_dir):
    root, _ = coco_dir

    def take(ds, p, n, k):
        it = ds.train_samples(0, p, n)
        return [next(it) for _ in range(k)]

    a, b = take(_ds(root, seed=3), 0, 1, 8), take(_ds(root, seed=3), 0, 1, 8)
    for x, y in zip(a, b, strict=True):
        assert x["image_id"] == y["image_id"]
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
    p0, p1 = take(_ds(root, seed=3), 0, 2, 4), take(_ds(root, seed=3), 1, 2, 4)
    merged = [s for pair in zip(p0, p1, strict=True) for s in pair]
    assert [s["image_id"] for s in merged] == [s["image_id"] for s in a]
    np.testing.assert_array_equal(merged[5]["image"], a[5]["image"])
    # Every epoch is a permutation of the 6 images; another seed gives another order.
    assert sorted(s["image_id"] for s in take(_ds(root, seed=3), 0, 1, 6)) == [1, 2, 3, 4, 5, 6]
    assert [s["image_id"] for s in take(_ds(root, seed=4), 0, 1, 6)] != [
        s["image_id"] for s in a[:6]]
    # Resuming at index 5 gives the same samples as the uninterrupted stream.
    it = _ds(root, seed=3).train_samples(5, 0, 1)
    np.testing.assert_array_equal(next(it)["image"], a[5]["image"])


def test_train_samples_boxes_inside_image(coco_dir):
    root, _ = coco_dir
    it = _ds(root, seed=0).train_samples()
    for _ in range(24):
        s = next(it)
        h, w = s["image"].shape[:2]
        assert max(h, w) <= SMALL.max_size
        b = s["boxes"]
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert np.all(b >= 0) and np.all(b[:, [0, 2]] <= w) and np.all(b[:, [1, 3]] <= h)
        assert len(b) == len(s["labels"])


@pytest.mark.slow
def test_cli_trains_on_shapes_export_with_original_ids(tmp_path):
    """The shapes export trains end to end through configs' custom loader (CLI, tiny model)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    export = tmp_path / "shapes_coco"
    subprocess.run([sys.executable, "-m", "detr_jax.data.shapes", "--export", str(export),
                    "--num-images", "12"], cwd=root, env=env, check=True, capture_output=True)
    # Non-contiguous category ids: shift every id by x10 so that labels != ids.
    ann = json.load(open(export / "annotations.json"))
    for c in ann["categories"]:
        c["id"] *= 10
    for a in ann["annotations"]:
        a["category_id"] *= 10
    write_json(str(export / "annotations.json"), ann)
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "detr_jax.main", f"--config=tests/tiny_custom_config.py:{export}",
         f"--workdir={workdir}", "--config.total_steps=2", "--config.checkpoint_every=2",
         "--config.log_every=1"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    preds = json.load(open(workdir / "predictions.json"))
    gt = json.load(open(workdir / "ground_truth.json"))
    assert preds and {p["category_id"] for p in preds} <= {10, 20, 30, 40, 50, 60}
    assert {c["id"] for c in gt["categories"]} == {10, 20, 30, 40, 50, 60}
    assert len(gt["annotations"]) == len(ann["annotations"])
    assert os.path.exists(workdir / "eval_images.png")


def test_config_checks_for_custom_data(coco_dir):
    from conftest import tiny_config

    from detr_jax.config_validation import ConfigError, validate_config
    from detr_jax.data import build_dataset

    c = tiny_config(dataset="custom")
    with pytest.raises(ConfigError) as e:
        validate_config(c, num_devices=1)
    msg = str(e.value)
    assert "custom.train_annotations is empty" in msg and "custom.val_images is empty" in msg
    assert "transforms.max_size=1333" in msg  # no (96, 96) bucket fits a 1333 px side
    root, _ = coco_dir
    ann, images = os.path.join(root, "annotations.json"), os.path.join(root, "images")
    for k, v in (("train_annotations", ann), ("val_annotations", ann), ("train_images", images),
                 ("val_images", images)):
        c.custom[k] = v
    c.transforms.max_size = 96
    validate_config(c, num_devices=1)
    with pytest.raises(DataError, match=r"num_classes=6 but .* declares 3 categories"):
        build_dataset(c)
    c.num_classes = 3
    ds = build_dataset(c)
    assert ds.category_ids == (3, 17, 42) and ds.augment is None


def test_evaluator_scores_against_the_file_and_draws_category_names(coco_dir, tmp_path,
                                                                   monkeypatch):
    from conftest import tiny_config

    from detr_jax.evaluation import evaluator as evaluator_mod

    root, _ = coco_dir
    ds = _ds(root)
    ev = evaluator_mod.Evaluator(tiny_config(), ds, None, None, str(tmp_path))
    assert any(a["iscrowd"] for a in ev.gt["annotations"])  # the file's GT, crowd included
    assert {c["id"] for c in ev.gt["categories"]} == {3, 17, 42}
    drawn = []

    def fake_draw(image, boxes, labels, scores, class_names, **kw):
        drawn.append([class_names[int(label)] for label in labels])
        return image

    monkeypatch.setattr(evaluator_mod, "draw_detections", fake_draw)
    first = ds.val_samples()[0]["image_id"]
    preds = [{"image_id": first, "category_id": 42, "bbox": [1, 1, 5, 5], "score": 0.9},
             {"image_id": first, "category_id": 3, "bbox": [1, 1, 5, 5], "score": 0.8}]
    ev._draw(preds, step=0)
    assert drawn[0] == ["zebra", "cat"]
