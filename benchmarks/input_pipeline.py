"""Input-pipeline throughput (images/s) at COCO scale with the DETR transforms, no accelerator.

    python benchmarks/input_pipeline.py [--images 64] [--batches 12] [--workers 1 2 4]

Writes ``--images`` synthetic 640x480 JPEGs (noise texture + 7 boxes each, COCO's mean) with a
COCO-format annotations file to a temporary folder, then times ``train_batches`` of the custom
COCO-JSON loader (decode, EXIF check, DETR multi-scale/RandomSelect-crop transforms, padding into
the COCO buckets, ImageNet normalisation) at batch 8, after one warm-up batch.  Rows: workers
(decode/transform threads) x augmentations off / on (RandAugment 2 ops + CutMix p=0.5 + Random
Erasing p=0.25).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_dataset(root: str, n: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        base = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
        img.save(os.path.join(root, "images", f"{i:06d}.jpg"), quality=90)
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480})
        for _ in range(7):
            x, y = rng.uniform(0, 560), rng.uniform(0, 400)
            w, h = rng.uniform(10, 80), rng.uniform(10, 80)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 4)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    from detr_jax.config_base import base_config
    from detr_jax.data import train_batches
    from detr_jax.data.augment import make_augment
    from detr_jax.data.custom import CocoJsonDataset

    buckets = [(800, 1344), (1344, 800), (1344, 1344)]  # configs/custom.py
    with tempfile.TemporaryDirectory() as root:
        ann = make_dataset(root, args.images)
        images = os.path.join(root, "images")
        print(f"{os.cpu_count()} host cores; batch {args.batch_size}; 640x480 JPEGs")
        for aug_on in (False, True):
            cfg = base_config().augment
            if aug_on:
                cfg.randaugment_num_ops, cfg.cutmix_prob, cfg.random_erasing_prob = 2, 0.5, 0.25
            for workers in args.workers:
                ds = CocoJsonDataset(ann, images, ann, images, num_workers=workers,
                                     augment=make_augment(cfg))
                it = train_batches(ds, global_batch_size=args.batch_size, start_step=0,
                                   buckets=buckets, max_boxes=64)
                next(it)  # warm-up
                t0 = time.perf_counter()
                for _ in range(args.batches):
                    next(it)
                dt = time.perf_counter() - t0
                it.close()  # stops the background threads before the next row
                rate = args.batches * args.batch_size / dt
                print(f"augment={'on ' if aug_on else 'off'} workers={workers}: "
                      f"{rate:6.1f} images/s")


if __name__ == "__main__":
    main()
