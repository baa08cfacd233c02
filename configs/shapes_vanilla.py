"""The vanilla DETR on the embedded synthetic "shapes" data: a from-scratch DETR on a laptop CPU.

Run:  python -m detr_jax.main --config=configs/shapes_vanilla.py --workdir=runs/shapes_vanilla

The data, image size, batch and backbone every shapes config builds on (configs/shapes.py, the
demo, is the best recipe of docs/benchmarks.md, "DINO on shapes"); until 2026-12-02 this was
configs/shapes.py.

Measured on the project's 2-core CPU (2026-11-21, docs/benchmarks.md): 3000 steps, 9:10 wall
clock including start-up, compile and evaluation (5.9 steps/s, 2.1 GiB peak RSS); AP 0.131,
AP50 0.313, AP75 0.085 on the 256 held-out images (target: AP50 >= 0.30 in 10 minutes).
"""

from detr_jax.config_base import base_config


def get_config(arg: str = ""):
    if arg:
        raise ValueError(f"configs/shapes_vanilla.py takes no argument, got {arg!r}")
    c = base_config()
    c.dataset = "shapes"
    c.num_classes = 6
    c.total_steps = 3000
    c.batch_size = 8
    c.log_every = 50
    c.eval_every = 0  # only at the end
    c.checkpoint_every = 1000
    c.max_boxes = 8
    c.image_buckets = [(96, 96)]
    c.shapes.num_val = 256
    c.eval.batch_size = 32
    c.eval.draw_score_threshold = 0.3

    m = c.model
    m.backbone.name = "resnet18"
    m.backbone.width = 16
    m.backbone.norm = "bn"
    m.backbone.frozen_stages = 0
    m.backbone.zero_init_residual = False
    # C4 with its stage dilated: stride 8, a 12x12 feature map at 96 px (C5 at stride 16 gave
    # 6x6, too coarse for 8-12 px objects: AP50 0.215 against 0.344 at 4200 steps).
    m.neck.level = "C4"
    m.backbone.dilation = True
    m.hidden_dim = 128
    m.transformer.nheads = 8
    m.transformer.enc_layers = 1  # at 144 tokens a layer costs ~45 ms/step; 1 also learns faster
    m.transformer.dec_layers = 3
    m.transformer.dim_feedforward = 512
    m.transformer.dropout = 0.0
    m.queries.num_queries = 20
    # From scratch, the class loss reaches the backbone only through near-uniform attention, so
    # the backbone also gets direct per-position class targets (detr_jax/losses/dense.py).
    m.heads.dense_aux = True
    c.loss.terms.dense = {"eos_coef": 0.1}
    c.loss.weights.loss_dense = 3.0  # on the C5 recipe: 1.0 gave AP50 0.104, 3.0 0.215, 6.0 0.202

    o = c.optim
    o.lr = 2e-4
    o.param_rules = (("^backbone/", 5.0),)  # 1e-3: a from-scratch CNN learns far faster
    o.warmup_steps = 200
    o.schedule = "cosine"
    return c
