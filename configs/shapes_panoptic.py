"""Panoptic segmentation on the embedded "shapes_panoptic" data: Mask2Former from scratch on a
laptop CPU.

Run:  python -m detr_jax.main --config=configs/shapes_panoptic.py --workdir=runs/shapes_panoptic

The data (detr_jax/data/shapes_panoptic.py): the shapes demo's 6 thing classes on 2-3 textured
stuff regions of 5 stuff classes (11 classes, things first), 96-px images, every pixel in one
segment. The model (detr_jax/config_mask2former.py at demo size): ResNet-18 at width 32 with
BatchNorm from scratch, the pixel decoder's FPN over C2-C5 at width 128 with `enc_layers`
deformable layers, 3 masked-attention decoder layers (4 supervised predictions), 24 queries;
Mask2Former's matcher and point-sampled loss on 256 points (the stride-4 masks are 24x24;
1024 points cost 126 ms more per step), class weight 5, 1600 steps.
Evaluation: box AP, COCO mask AP (things) and PQ / SQ / RQ on 256 held-out images, the
predicted panoptic maps in `eval_panoptic.png` and TensorBoard, the COCO panoptic files in
`panoptic_predictions/`. Measured on the project's 2-core CPU (2026-12-02, docs/benchmarks.md,
"Panoptic shapes"): 9:20 wall, PQ 0.131 (things 0.042, stuff 0.239), SQ 0.493, RQ 0.154, mask
AP 0.048 (AP50 0.086); 2500 steps reach PQ 0.276.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from shapes_vanilla import get_config as shapes_config  # noqa: E402

from detr_jax.config_mask2former import mask2former  # noqa: E402


def get_config(arg: str = ""):
    if arg:
        raise ValueError(f"configs/shapes_panoptic.py takes no argument, got {arg!r}")
    c = shapes_config()
    c.dataset = "shapes_panoptic"
    c.num_classes = 11
    c.max_boxes = 16  # up to 8 things + 3 stuff regions
    c.model.backbone.dilation = False
    c.model.backbone.width = 32
    c.model.heads.dense_aux = False
    del c.loss.terms["dense"], c.loss.weights["loss_dense"]
    mask2former(c, num_points=256)
    m = c.model
    m.backbone.mask_features = False
    m.neck.mask_dim = 128
    m.neck.enc_layers = 1
    m.neck.dim_feedforward = 256
    m.transformer.dec_layers = 3
    m.transformer.dim_feedforward = 512
    m.queries.num_queries = 24
    # The class weight 5 (Mask2Former's 2) in the loss and the matching: from scratch the class
    # lags the masks (docs/benchmarks.md, "Panoptic shapes": class error 73% after 1500 steps at
    # weight 2, 34% after 1150 at weight 5).
    c.loss.weights.loss_ce = 5.0
    c.matcher.costs["class"] = 5.0
    o = c.optim
    o.lr = 4e-4
    o.param_rules = (("^backbone/", 2.5),)  # the from-scratch backbone at 1e-3
    o.weight_decay = 1e-4
    o.clip_norm = 0.1
    o.warmup_steps = 200
    o.schedule = "cosine"
    c.total_steps = 1600
    return c
