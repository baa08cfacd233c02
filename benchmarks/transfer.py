"""Transfer benchmark: fine-tune a shapes-trained DETR on a shapes variant with other classes.

The source is a `configs/shapes.py` run (6 classes: standard shapes). The target is the "plain"
variant (4 classes: circle, square, triangle, cross; no distractor lines or blobs), so the class
heads are re-initialised. Both arms use `configs/shapes.py` with the same hyperparameters and
steps; one starts from `--source` (`config.init_from`), the other from scratch:

    python -m detr_jax.main --config=configs/shapes.py --workdir=/tmp/shapes_src   # the source
    python benchmarks/transfer.py --source=/tmp/shapes_src --steps=400 --workdir=/tmp/transfer

Prints AP / AP50 of both arms on the 256 held-out images of the target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="shapes workdir or params checkpoint")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--workdir", default="/tmp/transfer")
    parser.add_argument("--arms", default="finetune,scratch")
    args = parser.parse_args()

    from configs.shapes import get_config
    from detr_jax import train

    results = {}
    for arm in args.arms.split(","):
        config = get_config()
        config.shapes.spec, config.num_classes = "plain", 4
        config.total_steps, config.checkpoint_every = args.steps, args.steps
        config.use_tensorboard = False
        if arm == "finetune":
            config.init_from = args.source
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
    print(json.dumps({"steps": args.steps, **results}))


if __name__ == "__main__":
    main()
