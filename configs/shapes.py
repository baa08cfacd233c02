"""The embedded synthetic "shapes" demo: a from-scratch detector that trains on a laptop CPU.

Run:  python -m detr_jax.main --config=configs/shapes.py --workdir=runs/shapes

The 10-minute recipe of docs/benchmarks.md ("The demo at AP50 0.90", 2026-12-02): two-stage
Deformable DETR (configs/shapes_deformable.py) on the data and batch of the vanilla demo
(configs/shapes_vanilla.py): 96-px images, batch 8, ResNet-18 at width 32 from scratch, C3-C5
+ a stride-64 level at width 128 read directly by 3 deformable decoder layers (no encoder
layers: at 96 px they were two thirds of the step), 20 proposals, 4200 steps.
Measured on the project's 2-core CPU (2026-12-02, docs/benchmarks.md): 9:17 wall for 4200 steps
with start-up, compilation and evaluation; over seeds 0, 1 and 2, AP50 0.901 ± 0.011 (AP 0.710)
on the 256 held-out images (the issue's target: 0.90).
`get_config("vanilla")` gives the vanilla DETR demo (configs/shapes_vanilla.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shapes_deformable import get_config as deformable_config  # noqa: E402
from shapes_vanilla import get_config as vanilla_config  # noqa: E402


def get_config(arg: str = ""):
    if arg == "vanilla":
        return vanilla_config()
    if arg:
        raise ValueError(f"configs/shapes.py:{arg}; choose '' (the demo) or 'vanilla'")
    c = deformable_config("two_stage")
    # The 10-minute levers (docs/benchmarks.md, "The demo at AP50 0.90"): at 96 px the two
    # deformable encoder layers cost 64% of the step (250 -> 91 ms without them), and the
    # saved time buys a ResNet-18 twice as wide (121 ms/step) and twice the steps.
    c.model.transformer.enc_layers = 0
    c.model.backbone.width = 32
    c.total_steps = 4200
    return c
