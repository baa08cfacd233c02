"""The full set of config fields with DETR's defaults; `configs/*.py` start from `base_config()`.

Top-level fields: `total_steps`, `batch_size` (global), `eval_every`, `checkpoint_every`, ...
Sub-configs: `mesh`, `model`, `matcher`, `loss`, `optim`, `eval`, one per dataset (`shapes`,
`coco`, `custom`) and `transforms`.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = "shapes"
    c.num_classes = 4
    c.total_steps = 1000
    c.batch_size = 16  # global, over all devices and processes
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.max_boxes = 8
    c.image_buckets = [(96, 96)]  # (H, W) canvases the batches are padded to
    c.use_tensorboard = True
    c.max_consecutive_nonfinite = 20  # skipped (NaN/inf) steps in a row before the run stops
    c.preemption_sync_every = 1  # multi-process: steps between agreeing on a SIGTERM stop
    # XLA:CPU's YNNPACK library fusions (XLA's default); off (False): XLA's Eigen kernels, which
    # run DETR's convolutions faster on CPU (core/compile_options.py). No effect on GPU/TPU.
    c.xla_cpu_ynnpack = False

    # ---- Device mesh (detr_jax/core/sharding.py): data * fsdp must equal the device count ----
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel replicas; -1: all devices not used by fsdp
    c.mesh.fsdp = 1  # devices sharing (sharding) params and optimiser state; batches split on both

    # ---- Transfer learning (detr_jax/transfer.py, optim.param_labels) ----
    c.init_from = ""  # converted params checkpoint (python -m detr_jax.convert) or a workdir
    c.init_mode = "all"  # all | backbone (a different num_classes re-initialises the class head)
    c.freeze = "none"  # none | backbone | heads | decoder_and_heads (the rest gets zero updates)
    c.freeze_backbone_steps = 0  # the backbone gets zero updates for the first K steps

    m = c.model = ml_collections.ConfigDict()
    m.name = "detr"
    m.backbone = "resnet50"
    m.backbone_width = 64
    m.backbone_norm = "frozen_bn"  # frozen_bn (pretrained) | bn | gn (from scratch)
    m.dilation = False  # DC5
    m.backbone_frozen_stages = 2  # stem + layer1, as in the original
    m.zero_init_residual = False
    m.mask_backbone_features = True
    m.position_embedding = "sine"  # sine | learned
    m.hidden_dim = 256
    m.nheads = 8
    m.enc_layers = 6
    m.dec_layers = 6
    m.dim_feedforward = 2048
    m.dropout = 0.1
    m.drop_path = 0.0
    m.pre_norm = False
    m.num_queries = 100
    m.query_init_std = 1.0  # N(0, 1) as nn.Embedding in the original
    m.feature_level = "C5"  # backbone level fed to the transformer (C4: stride 16, 8 dilated)
    m.dense_aux_head = False  # per-position class head on C5 (detr_jax/dense_loss.py)
    m.num_query_groups = 1  # Group DETR training groups (detr_jax/models/query_groups.py)
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params, loss and heads stay fp32)
    m.attention_impl = "xla"  # xla (einsums) | dot_product | cudnn (jax.nn.dot_product_attention)
    m.remat_backbone = False  # rematerialise residual blocks / transformer layers (nn.remat)
    m.remat_encoder = False
    m.remat_decoder = False
    m.conv_weight_grad = "xla"  # xla | gemm: backbone kernel gradients as GEMMs (models/conv.py)
    m.fold_frozen_bn = False  # fold FrozenBatchNorm into the convolutions (same params)

    mt = c.matcher = ml_collections.ConfigDict()
    mt.name = "hungarian_scipy"
    mt.cost_class = 1.0
    mt.cost_bbox = 5.0
    mt.cost_giou = 2.0

    ls = c.loss = ml_collections.ConfigDict()
    ls.eos_coef = 0.1
    ls.label_smoothing = 0.0
    ls.weight_ce = 1.0
    ls.weight_bbox = 5.0
    ls.weight_giou = 2.0
    ls.aux_loss = True
    ls.dense_aux_weight = 1.0  # used only with model.dense_aux_head

    o = c.optim = ml_collections.ConfigDict()
    o.lr = 1e-4
    o.backbone_lr_mult = 0.1
    o.weight_decay = 1e-4
    o.b1 = 0.9
    o.b2 = 0.999
    o.clip_norm = 0.1
    o.warmup_steps = 0
    o.schedule = "step"  # cosine | step | constant
    o.lr_drop_step = 1000
    o.lr_drop_factor = 0.1
    o.final_lr_factor = 0.01  # cosine: lr at the end, relative to the peak

    e = c.eval = ml_collections.ConfigDict()
    e.batch_size = 16
    e.top_k = 100
    e.num_images_to_draw = 8
    e.draw_score_threshold = 0.5
    e.annotations_file = ""  # coco: official instances_val2017.json (else GT built from tfds)

    s = c.shapes = ml_collections.ConfigDict()
    s.num_val = 256
    s.spec = "standard"

    cc = c.coco = ml_collections.ConfigDict()
    cc.data_dir = ""  # tfds data_dir holding coco/2017

    # --- Real data (issue 4): COCO-format datasets on disk, DETR transforms -----------------
    cu = c.custom = ml_collections.ConfigDict()  # dataset="custom" (detr_jax/data/custom.py)
    cu.train_annotations = ""  # COCO-format JSON
    cu.train_images = ""  # folder holding its images' file_name
    cu.val_annotations = ""
    cu.val_images = ""
    cu.num_workers = 4  # image-decoding threads per process
    cc.name = "coco/2017"  # tfds name (detr_jax/data/tfds_coco.py)
    cc.train_split = "train"
    cc.val_split = "validation"
    cc.max_val_images = 0  # 0: the whole validation split
    cc.shuffle_buffer = 1000  # tf.data shuffle buffer (examples, after the file shuffle)
    cc.num_workers = 4  # numpy transform threads per process
    t = c.transforms = ml_collections.ConfigDict()  # detr_jax/data/transforms.py (custom, coco)
    t.scales = list(range(480, 801, 32))  # multi-scale training: shorter side choices
    t.max_size = 1333  # longer side cap (train and eval)
    t.select_scales = [400, 500, 600]  # RandomSelect branch: resize, then crop
    t.crop_min = 384  # RandomSizeCrop(crop_min, crop_max)
    t.crop_max = 600
    t.eval_size = 800
    t.hflip = True
    t.random_select = True
    a = c.augment = ml_collections.ConfigDict()  # detr_jax/data/augment.py; all off by default
    a.randaugment_num_ops = 0  # 0: off (e.g. 2)
    a.randaugment_magnitude = 9.0  # 0..10
    a.mixup_prob = 0.0
    a.mixup_alpha = 1.5  # lam ~ Beta(alpha, alpha)
    a.cutmix_prob = 0.0
    a.cutmix_alpha = 1.0
    a.random_erasing_prob = 0.0
    a.max_covered = 0.7  # CutMix / erasing: boxes covered more than this are dropped
    return c


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """Sets the dotted field `path` (e.g. "model.hidden_dim"); unknown fields raise KeyError."""
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    if leaf not in node:
        raise KeyError(f"unknown config field {path!r}")
    node[leaf] = value


def apply_override(config: ml_collections.ConfigDict, text: str) -> None:
    """Applies one "field=value" override; the value is parsed as JSON when it can be."""
    path, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    set_field(config, path, value)
