"""CLI: `python -m detr_jax.predict --config=CONFIG --checkpoint=CKPT [flags] IMAGES...`.

Writes to `--output_dir` (default `predictions/`):
- `detections.json`: COCO results format, a list of {image_id, category_id, bbox [x, y, w, h]
  pixels of the original image, score}, for detections with score >= `--score_threshold`;
- `images.json`: {image_id: file}; an image whose file stem is an integer (as in a COCO export)
  keeps it as id, the others are numbered from 1 in the order given;
- `<stem>_detections.png`: boxes with class names and scores;
- `<stem>_query<q>_attention.png`: per kept query (best first, at most `--max_attention_maps`),
  the last decoder layer's cross-attention over the image with that query's box;
- `<stem>_encoder_attention.png`: the last encoder layer's self-attention of one position
  (`--point=y,x` in pixels of the original image; default: the best box's centre).
With a mask head (the config's `eval.postprocessors` name "segm" / "panoptic"), also:
- `segmentations.json`: COCO results with each kept detection's mask as RLE (`segmentation`,
  at the original size) beside its bbox and score;
- `<stem>_masks.png`: the kept detections' masks over the image;
- `<stem>_panoptic.png`: the panoptic map over the image, and `panoptic/<stem>.png` +
  `panoptic.json`: the same in the COCO panoptic format (RGB-encoded segment ids, the
  `annotations` with `segments_info`; things and stuff from `categories.json`'s `isthing`).

Images are resized as the config's evaluation resizes them (`detr_jax.inference.eval_resize`:
the eval transform's shorter side `transforms.eval_size`, longer side at most
`transforms.max_size` for the coco and custom datasets; none for shapes) unless `--min_size` /
`--max_size` say otherwise, and predicted by the same `predict_fn` evaluation uses.

CKPT is any `init_from` path: a converted checkpoint, a training workdir or a checkpoint step.
Class names and COCO category ids: from the `categories.json` that training writes to its workdir
(the dataset's own ids, e.g. a custom dataset's non-contiguous ones, and names); else the shapes
dataset's names with id = label + 1 when `config.dataset="shapes"`; else `class_<label>` with
id = label (the COCO-trained DETR's 91 logits are indexed by category id). `--class_names=a,b,...`
overrides the names.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from detr_jax.evaluation.attention_maps import draw_point_attention, draw_query_attention
from detr_jax.evaluation.coco_mask_eval import mask_predictions_to_coco
from detr_jax.evaluation.panoptic_format import (
    panoptic_json,
    write_panoptic_json,
    write_panoptic_prediction,
)
from detr_jax.evaluation.visualize import draw_detections, save_png
from detr_jax.evaluation.visualize_masks import blend_instances, blend_panoptic
from detr_jax.inference import Predictor, eval_resize, load_for_inference

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.DEFINE_string("checkpoint", None, "Converted checkpoint, training workdir or step dir.")
flags.DEFINE_string("output_dir", "predictions", "Where the JSON and PNG files go.")
flags.DEFINE_float("score_threshold", 0.5, "Keep detections with at least this score.")
flags.DEFINE_list("class_names", None, "Names of the contiguous labels.")
flags.DEFINE_integer("min_size", None, "Resize the shorter side to this (0: keep the size; "
                     "default: as the config's evaluation, transforms.eval_size for coco/custom).")
flags.DEFINE_integer("max_size", None, "Cap on the longer side when resizing (0: none; default: "
                     "as the config's evaluation, transforms.max_size for coco/custom).")
flags.DEFINE_list("point", None, "y,x pixel whose encoder self-attention is drawn.")
flags.DEFINE_integer("max_attention_maps", 10, "Cross-attention PNGs per image, at most.")
flags.mark_flags_as_required(["config", "checkpoint"])


def find_categories(checkpoint: str) -> list[dict] | None:
    """The `categories.json` a training run wrote to its workdir, found from a workdir, its
    `checkpoints/` folder or a step directory; None when there is none."""
    path = os.path.abspath(checkpoint)
    for _ in range(3):
        candidate = os.path.join(path, "categories.json")
        if os.path.isfile(candidate):
            with open(candidate) as f:
                return json.load(f)
        path = os.path.dirname(path)
    return None


def class_info(
    config, override: list[str] | None, checkpoint: str = ""
) -> tuple[list[str], list[int]]:
    """(class name per label, COCO category id per label)."""
    n = config.num_classes
    categories = find_categories(checkpoint) if checkpoint else None
    if categories is not None and len(categories) == n:  # a training workdir's own labels
        names, ids = [c["name"] for c in categories], [int(c["id"]) for c in categories]
    elif config.dataset == "shapes":
        from detr_jax.data import SHAPES_SPECS

        names = list(SHAPES_SPECS[config.shapes.spec].class_names)
        ids = list(range(1, n + 1))
    else:
        names, ids = [f"class_{i}" for i in range(n)], list(range(n))
    if override:
        if len(override) != n:
            raise app.UsageError(f"--class_names has {len(override)} names, num_classes={n}")
        names = list(override)
    return names, ids


def thing_flags(config, checkpoint: str = "") -> list[bool] | None:
    """`isthing` per label: from the workdir's `categories.json`, else the panoptic dataset's
    own (shapes_panoptic, COCO panoptic); None when unknown (all classes are things)."""
    categories = find_categories(checkpoint) if checkpoint else None
    if categories and all("isthing" in c for c in categories):
        return [bool(c["isthing"]) for c in categories]
    if config.dataset == "shapes_panoptic":
        from detr_jax.data import PANOPTIC_SPECS

        return list(PANOPTIC_SPECS[config.shapes.spec].is_thing)
    if config.dataset == "coco" and config.coco.name == "coco/2017_panoptic":
        from detr_jax.data.tfds_coco_panoptic import PANOPTIC_IS_THING

        return list(PANOPTIC_IS_THING)
    return None


def mask_outputs(config) -> tuple[str, ...]:
    """The mask postprocessors the config evaluates ("segm", "panoptic"), predicted too."""
    names = tuple(config.eval.get("postprocessors", ("bbox",)))
    return tuple(n for n in names if n in ("segm", "panoptic"))


def image_ids(paths: list[str]) -> list[int]:
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    if all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def run(config, checkpoint: str, paths: list[str], output_dir: str, **opts) -> list[dict]:
    """Predicts every image in `paths`, writes the files listed in the module docstring and
    returns the COCO results list."""
    names, cat_ids = class_info(config, opts.get("class_names"), checkpoint)
    model, variables = load_for_inference(config, checkpoint)
    masks, is_thing = mask_outputs(config), thing_flags(config, checkpoint)
    predictor = Predictor(
        model, variables, config.get("xla_cpu_ynnpack", False), masks=masks, is_thing=is_thing,
        object_threshold=config.eval.get("panoptic_object_threshold", 0.8),
        overlap_threshold=config.eval.get("panoptic_overlap_threshold", 0.8))
    threshold = opts.get("score_threshold", 0.5)
    point = opts.get("point")
    default_min, default_max = eval_resize(config)  # resize as this config's evaluation does
    min_size = default_min if opts.get("min_size") is None else opts["min_size"]
    max_size = default_max if opts.get("max_size") is None else opts["max_size"]
    os.makedirs(output_dir, exist_ok=True)
    results, id_map, segm_results, panoptic = [], {}, [], []
    for path, image_id in zip(paths, image_ids(paths), strict=True):
        image = np.asarray(Image.open(path).convert("RGB"))
        p = predictor(image, threshold, point, min_size, max_size)
        stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
        id_map[image_id] = path
        for box, label, score in zip(p["boxes"], p["labels"], p["scores"], strict=True):
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(cat_ids[int(label)]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": float(score),
                }
            )
        save_png(
            stem + "_detections.png",
            draw_detections(
                image, p["boxes"], p["labels"], p["scores"], names, score_threshold=threshold
            ),
        )
        if "masks" in p:
            segm_results += mask_predictions_to_coco(image_id, p["scores"], p["labels"],
                                                     p["masks"], cat_ids)
            save_png(stem + "_masks.png", blend_instances(image, p["masks"], p["labels"]))
        if "panoptic" in p:
            ids, segments = p["panoptic"]["ids"], p["panoptic"]["segments"]
            save_png(stem + "_panoptic.png", blend_panoptic(image, ids, segments))
            panoptic.append(write_panoptic_prediction(
                os.path.join(output_dir, "panoptic"), ids, segments, image_id, cat_ids,
                os.path.basename(stem) + ".png"))
        maps = 0 if p["cross_attention"] is None else len(p["queries"])  # none: deformable
        for i in range(min(maps, opts.get("max_attention_maps", 10))):
            save_png(
                f"{stem}_query{int(p['queries'][i])}_attention.png",
                draw_query_attention(
                    image,
                    p["cross_attention"][i],
                    p["boxes"][i],
                    int(p["labels"][i]),
                    float(p["scores"][i]),
                    names,
                ),
            )
        if p["encoder_attention"] is not None:
            save_png(
                stem + "_encoder_attention.png",
                draw_point_attention(image, p["encoder_attention"], p["point"]),
            )
    with open(os.path.join(output_dir, "detections.json"), "w") as f:
        json.dump(results, f)
    if "segm" in masks:
        with open(os.path.join(output_dir, "segmentations.json"), "w") as f:
            json.dump(segm_results, f)
    if "panoptic" in masks:
        flags_ = is_thing or [True] * len(names)
        cats = [{"id": int(i), "name": n, "isthing": int(t)}
                for i, n, t in zip(cat_ids, names, flags_, strict=True)]
        images = [{"id": a["image_id"], "file_name": os.path.basename(id_map[a["image_id"]])}
                  for a in panoptic]
        write_panoptic_json(os.path.join(output_dir, "panoptic.json"),
                            panoptic_json(panoptic, images, cats))
    with open(os.path.join(output_dir, "images.json"), "w") as f:
        json.dump({str(k): v for k, v in id_map.items()}, f, indent=1)
    return results


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more image files after the flags")
    point = tuple(float(v) for v in FLAGS.point) if FLAGS.point else None
    results = run(
        FLAGS.config,
        FLAGS.checkpoint,
        paths,
        FLAGS.output_dir,
        score_threshold=FLAGS.score_threshold,
        class_names=FLAGS.class_names,
        min_size=FLAGS.min_size,
        max_size=FLAGS.max_size,
        point=point,
        max_attention_maps=FLAGS.max_attention_maps,
    )
    print(
        f"{len(results)} detections in {len(paths)} images -> {FLAGS.output_dir}", file=sys.stderr
    )


if __name__ == "__main__":
    app.run(main)
