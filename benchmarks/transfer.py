"""Transfer benchmark: fine-tune a shapes-trained DETR on a shapes variant with other classes.

The source is a `configs/shapes_vanilla.py` run (standard shapes, 6 classes). The target is the
"plain" variant (4 classes: circle, square, triangle, cross; no distractor lines or blobs) with the
non-contiguous COCO category ids 2, 5, 11, 17, exported to COCO format and read back through
the custom-dataset loader (`configs/shapes_custom.py`: `dataset="custom"`). The class heads are
therefore re-initialised. Both arms use the same hyperparameters and steps; one starts from
`--source` (`config.init_from`), the other from scratch:

    python -m detr_jax.main --config=configs/shapes_vanilla.py --workdir=/tmp/shapes_src  # source
    python benchmarks/transfer.py --source=/tmp/shapes_src --steps=400 --workdir=/tmp/transfer

The export (steps x batch training images, 256 validation images) is written once under
`--workdir/data`. `--data=builtin` trains on the built-in plain stream instead (no export).
Prints a table of AP / AP50 for both arms on the 256 held-out target images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

CATEGORY_IDS = "2,5,11,17"  # non-contiguous on purpose: the loader maps them to labels 0..3


def export(data_dir: str, num_train: int) -> tuple[str, str]:
    """The plain-variant export (train, val) under `data_dir`, written once."""
    from detr_jax.data import shapes

    dirs = []
    for split, n in (("train", num_train), ("val", 256)):
        out = os.path.join(data_dir, f"plain_{split}_{n}")
        if not os.path.exists(os.path.join(out, "annotations.json")):
            shapes.main(["--export", out, "--num-images", str(n), "--split", split,
                         "--spec", "plain", "--category-ids", CATEGORY_IDS])
        dirs.append(out)
    return dirs[0], dirs[1]


def arm_config(arm: str, args: argparse.Namespace, dirs: tuple[str, str] | None):
    if dirs is None:
        from shapes_vanilla import get_config

        config = get_config()
        config.shapes.spec = "plain"
    else:
        from shapes_custom import get_config

        config = get_config(",".join(dirs))
    config.num_classes = 4
    config.total_steps, config.checkpoint_every = args.steps, args.steps
    config.use_tensorboard = False
    if arm == "finetune":
        config.init_from = args.source
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="shapes workdir or params checkpoint")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--workdir", default="/tmp/transfer")
    parser.add_argument("--arms", default="finetune,scratch")
    parser.add_argument("--data", default="custom", choices=("custom", "builtin"))
    args = parser.parse_args()

    from detr_jax import train

    dirs = None
    if args.data == "custom":
        batch = arm_config("scratch", args, None).batch_size
        dirs = export(os.path.join(args.workdir, "data"), args.steps * batch)
    results = {}
    for arm in args.arms.split(","):
        config = arm_config(arm, args, dirs)
        workdir = os.path.join(args.workdir, arm)
        shutil.rmtree(workdir, ignore_errors=True)
        start = time.time()
        metrics = train.train_and_evaluate(config, workdir)
        results[arm] = {
            "AP": metrics.get("AP"),
            "AP50": metrics.get("AP50"),
            "wall_s": round(time.time() - start, 1),
        }
        print(arm, results[arm], flush=True)
    print(f"\ntransfer on {args.data} data, {args.steps} steps")
    print("| arm | AP | AP50 | wall (s) |\n|---|---|---|---|")
    for arm, r in results.items():
        print(f"| {arm} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['wall_s']} |")
    print(json.dumps({"steps": args.steps, "data": args.data, **results}))


if __name__ == "__main__":
    main()
