"""The full set of config fields with DETR's defaults; `configs/*.py` start from `base_config()`.

Top-level fields: `total_steps`, `batch_size` (global), `eval_every`, `checkpoint_every`, ...
Sub-configs: `mesh`, `model`, `matcher`, `loss`, `optim`, `eval`, one per dataset (`shapes`,
`coco`, `custom`), `data` (options common to the datasets) and `transforms`.
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
    c.freeze = "none"  # none | backbone | heads | decoder_and_heads | detector (see optim.py)
    c.freeze_backbone_steps = 0  # the backbone gets zero updates for the first K steps

    # ---- Model (detr_jax/models): detector-wide fields, then one sub-dict per part. Each
    # sub-dict's `name` picks the part from its registry; its other fields are the part's own
    # keyword arguments (an unknown one stops the start-up naming it).
    m = c.model = ml_collections.ConfigDict()
    m.name = "detr"
    m.hidden_dim = 256  # D, given to every part that has the field
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params, loss and heads stay fp32)
    m.backbone = ml_collections.ConfigDict(dict(  # models/backbones/resnet.py
        name="resnet50",  # resnet18 | resnet34 | resnet50 | resnet101
        width=64,
        norm="frozen_bn",  # frozen_bn (pretrained) | bn | gn (from scratch)
        dilation=False,  # DC5: the deepest stage built keeps the stride, dilated
        frozen_stages=2,  # stem + layer1, as in the original
        zero_init_residual=False,
        mask_features=True,
        remat=False,  # rematerialise residual blocks (nn.remat)
        conv_weight_grad="xla",  # xla | gemm: kernel gradients as GEMMs (models/conv.py)
        fold_bn=False,  # fold FrozenBatchNorm into the convolutions (same params)
    ))
    m.neck = ml_collections.ConfigDict(dict(  # models/necks/single_level.py
        name="single_level",
        level="C5",  # the level fed to the transformer (C4: stride 16, 8 dilated)
        position_embedding="sine",  # sine | learned
    ))
    m.transformer = ml_collections.ConfigDict(dict(  # models/transformers/detr.py
        name="detr",
        nheads=8,
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=2048,
        dropout=0.1,
        drop_path=0.0,
        pre_norm=False,
        attention_impl="xla",  # xla (einsums) | dot_product | cudnn (jax.nn.dot_product_attention)
        remat_encoder=False,
        remat_decoder=False,
    ))
    m.queries = ml_collections.ConfigDict(dict(  # models/queries/learned.py
        name="learned",
        num_queries=100,
        init_std=1.0,  # N(0, 1) as nn.Embedding in the original
        num_groups=1,  # Group DETR training groups (models/queries/groups.py)
    ))
    m.heads = ml_collections.ConfigDict(dict(  # models/heads/box.py
        name="class_box",
        dense_aux=False,  # per-position class head on the neck's level (losses/dense.py)
    ))

    # ---- Matching (detr_jax/matching): `name` picks the matcher, `costs` the weighted cost
    # terms; any other field is the matcher's own setting (e.g. auction's `eps`).
    mt = c.matcher = ml_collections.ConfigDict()
    mt.name = "hungarian_scipy"
    mt.costs = ml_collections.ConfigDict({"class": 1.0, "bbox": 5.0, "giou": 2.0})

    # ---- Criterion (detr_jax/losses): named terms with their settings, and the weight of each
    # loss they produce; every decoder layer gets the same terms (with `aux_loss`). Losses
    # without a weight (cardinality_error, class_error) are logged only.
    ls = c.loss = ml_collections.ConfigDict()
    ls.aux_loss = True
    # Two-stage proposals' loss: one foreground class (Deformable DETR) or the labels (DINO).
    ls.encoder_class_agnostic = True
    ls.terms = ml_collections.ConfigDict({
        "labels": {"eos_coef": 0.1, "label_smoothing": 0.0},
        "boxes": {},
        "cardinality": {},
    })
    ls.weights = ml_collections.ConfigDict({"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})

    o = c.optim = ml_collections.ConfigDict()
    o.lr = 1e-4
    # Parameter groups: ordered (regex on "/"-joined param paths, lr multiplier or "frozen");
    # the first rule that matches a path decides, unmatched params train at lr x 1. Each rule
    # must match some parameter. The parts' own rules (FrozenBatchNorm, backbone.frozen_stages)
    # and the `freeze` preset come first (detr_jax/optim.py).
    o.param_rules = (("^backbone/", 0.1),)  # a tuple: overridable from the command line
    o.weight_decay = 1e-4
    o.b1 = 0.9
    o.b2 = 0.999
    o.clip_norm = 0.1
    o.warmup_steps = 0
    o.schedule = "step"  # cosine | step | constant
    o.lr_drop_step = 1000
    o.lr_drop_factor = 0.1
    o.final_lr_factor = 0.01  # cosine: lr at the end, relative to the peak
    # EMA of the params (detr_jax/ema.py), kept in the train step and used for evaluation and
    # prediction: 0 = off; e.g. 0.9997 (RT-DETR / RF-DETR). Warm-up: decay min(d, (1+n)/(10+n)).
    o.ema_decay = 0.0
    o.ema_warmup = True

    e = c.eval = ml_collections.ConfigDict()
    e.batch_size = 16
    e.top_k = 100
    e.num_images_to_draw = 8
    e.draw_score_threshold = 0.5
    # What evaluation scores: "bbox" (COCO box AP), "segm" (COCO mask AP), "panoptic" (PQ, SQ,
    # RQ; the COCO panoptic files in the workdir). Mask ones need a mask head and data.with_masks.
    e.postprocessors = ("bbox",)
    # Panoptic inference (MaskFormer's): queries need a class probability above the object
    # threshold, and a segment keeps at least the overlap fraction of its own mask.
    e.panoptic_object_threshold = 0.8
    e.panoptic_overlap_threshold = 0.8
    e.annotations_file = ""  # coco: official instances_val2017.json (else GT built from tfds)

    s = c.shapes = ml_collections.ConfigDict()  # dataset="shapes" or "shapes_panoptic"
    s.num_val = 256
    s.spec = "standard"  # shapes: standard | plain; shapes_panoptic: standard | plain

    # ---- Data options common to the datasets (detr_jax/data) ----
    d = c.data = ml_collections.ConfigDict()
    # Segmentation targets: samples carry `masks` (decoded from COCO segmentations only when
    # on) and batches `masks` uint8 [B, M, Hb, Wb] + `is_thing` [B, M] (docs/interfaces.md).
    d.with_masks = False

    cc = c.coco = ml_collections.ConfigDict()
    cc.data_dir = ""  # tfds data_dir holding coco/2017

    # --- Real data (issue 4): COCO-format datasets on disk, DETR transforms -----------------
    cu = c.custom = ml_collections.ConfigDict()  # dataset="custom" (detr_jax/data/custom.py)
    cu.train_annotations = ""  # COCO-format JSON
    cu.train_images = ""  # folder holding its images' file_name
    cu.val_annotations = ""
    cu.val_images = ""
    # COCO panoptic (detr_jax/data/custom_panoptic.py): the PNG folders; when set, the
    # annotations files above are panoptic JSONs (segments_info per image).
    cu.train_panoptic_masks = ""
    cu.val_panoptic_masks = ""
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


# Fields renamed when the model became parts (detr_jax 0.2): old dotted name -> new one. Used to
# say where a field went (CLI overrides) and to read older converted checkpoints' meta.json.
LEGACY_FIELDS: dict[str, str] = {
    "model.backbone": "model.backbone.name",
    "model.backbone_width": "model.backbone.width",
    "model.backbone_norm": "model.backbone.norm",
    "model.dilation": "model.backbone.dilation",
    "model.backbone_frozen_stages": "model.backbone.frozen_stages",
    "model.zero_init_residual": "model.backbone.zero_init_residual",
    "model.mask_backbone_features": "model.backbone.mask_features",
    "model.remat_backbone": "model.backbone.remat",
    "model.conv_weight_grad": "model.backbone.conv_weight_grad",
    "model.fold_frozen_bn": "model.backbone.fold_bn",
    "model.feature_level": "model.neck.level",
    "model.position_embedding": "model.neck.position_embedding",
    **{f"model.{k}": f"model.transformer.{k}" for k in (
        "nheads", "enc_layers", "dec_layers", "dim_feedforward", "dropout", "drop_path",
        "pre_norm", "attention_impl", "remat_encoder", "remat_decoder")},
    "model.num_queries": "model.queries.num_queries",
    "model.query_init_std": "model.queries.init_std",
    "model.num_query_groups": "model.queries.num_groups",
    "model.dense_aux_head": "model.heads.dense_aux",
    "matcher.cost_class": "matcher.costs.class",
    "matcher.cost_bbox": "matcher.costs.bbox",
    "matcher.cost_giou": "matcher.costs.giou",
    "loss.eos_coef": "loss.terms.labels.eos_coef",
    "loss.label_smoothing": "loss.terms.labels.label_smoothing",
    "loss.weight_ce": "loss.weights.loss_ce",
    "loss.weight_bbox": "loss.weights.loss_bbox",
    "loss.weight_giou": "loss.weights.loss_giou",
    "loss.dense_aux_weight": "loss.weights.loss_dense",
    "optim.backbone_lr_mult": "optim.param_rules (the '^backbone/' rule)",
}


def translate_legacy_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` (dotted name -> value, e.g. an older converted checkpoint's meta.json
    `config_fields`) with every renamed field (LEGACY_FIELDS) under its new name; new names
    are kept. A field that has no single new place (`optim.backbone_lr_mult`) keeps its old
    name, so that setting it names the new place."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        new = LEGACY_FIELDS.get(key, key)
        out[new if " " not in new else key] = value
    return out


# Sub-dicts whose fields depend on the part chosen: a new field may be added there.
_OPEN_FIELDS = ("matcher",)


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """Sets the dotted field `path` (e.g. "model.hidden_dim"); unknown fields raise KeyError
    (naming the new place of a renamed one). A dict value replaces a whole sub-dict (e.g.
    `model.backbone={"name": "resnet18", ...}`); `matcher.*` may take new fields."""
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
        if p not in node:
            raise KeyError(_unknown(path))
        node = node[p]
        if not hasattr(node, "keys"):
            raise KeyError(_unknown(path))
    if leaf not in node and ".".join(parents) not in _OPEN_FIELDS:
        raise KeyError(_unknown(path))
    if isinstance(value, dict) and hasattr(node.get(leaf), "keys"):
        value = ml_collections.ConfigDict(value)  # a whole part, e.g. another backbone
    node[leaf] = value


def _unknown(path: str) -> str:
    moved = LEGACY_FIELDS.get(path)
    return f"unknown config field {path!r}" + (f" (now {moved})" if moved else "")


def apply_override(config: ml_collections.ConfigDict, text: str) -> None:
    """Applies one "field=value" override; the value is parsed as JSON when it can be."""
    path, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    set_field(config, path, value)
