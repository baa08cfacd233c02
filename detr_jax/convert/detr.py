"""Full-DETR key maps: facebookresearch/detr and HF `DetrForObjectDetection` -> our params.

Pure numpy (no torch). Inputs are state_dicts as `dict[str, np.ndarray]` (PyTorch layouts);
outputs are flat `dict[str, np.ndarray]` keyed by our "/"-joined param paths. The two maps are
written independently of each other (and of `hf_to_facebook_state_dict`), so converting an HF
model directly and through the facebookresearch layout cross-checks both.

facebookresearch/detr keys: `backbone.0.body.<torchvision resnet>`, `backbone.1.{row,col}_embed`
(learned position embedding only), `input_proj`, `query_embed`, `transformer.encoder.layers.N.
{self_attn.in_proj_weight, self_attn.out_proj, linear1, linear2, norm1, norm2}`,
`transformer.decoder.layers.N.{self_attn, multihead_attn, linear1, linear2, norm1..3}`,
`transformer.decoder.norm`, `class_embed`, `bbox_embed.layers.{0,1,2}`.

Hugging Face keys (transformers 5.x; the 4.x names are accepted and renamed first, see
`normalise_hf_keys`): `model.backbone.model.<HF ResNet or timm/torchvision resnet>`,
`model.position_embedding.{row,column}_embeddings`, `model.input_projection`,
`model.query_position_embeddings`, `model.encoder.layers.N.{self_attn.{q,k,v,o}_proj,
self_attn_layer_norm, mlp.fc1, mlp.fc2, final_layer_norm}`, `model.decoder.layers.N.{self_attn,
self_attn_layer_norm, encoder_attn, encoder_attn_layer_norm, mlp.fc1, mlp.fc2, final_layer_norm}`,
`model.decoder.layernorm`, `class_labels_classifier`, `bbox_predictor.layers.{0,1,2}`.
"""

from __future__ import annotations

import re

import numpy as np

from detr_jax.models.backbones.resnet_keys import detect_layout, infer_resnet, resnet_params
from detr_jax.models.torch_keys import ConversionError, KeyReader, conv_kernel, dense_kernel

FB_BACKBONE = "backbone.0.body."
HF_BACKBONE = "model.backbone.model."


def _linear(r: KeyReader, src: str, dst: str, out: dict) -> None:
    w, b = r.get(src + ".weight"), r.get(src + ".bias")
    if w is not None:
        out[dst + "/kernel"] = dense_kernel(w).astype(np.float32)
    if b is not None:
        out[dst + "/bias"] = b.astype(np.float32)


def _layernorm(r: KeyReader, src: str, dst: str, out: dict) -> None:
    w, b = r.get(src + ".weight"), r.get(src + ".bias")
    if w is not None:
        out[dst + "/scale"] = w.astype(np.float32)
    if b is not None:
        out[dst + "/bias"] = b.astype(np.float32)


def _packed_attention(r: KeyReader, src: str, dst: str, out: dict) -> None:
    """torch.nn.MultiheadAttention: in_proj_weight [3D, D] = (q; k; v), out_proj."""
    w, b = r.get(src + ".in_proj_weight"), r.get(src + ".in_proj_bias")
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        if w is not None:
            out[f"{dst}/{name}/kernel"] = dense_kernel(np.split(w, 3)[i]).astype(np.float32)
        if b is not None:
            out[f"{dst}/{name}/bias"] = np.split(b, 3)[i].astype(np.float32)
    _linear(r, src + ".out_proj", dst + "/out_proj", out)


def _split_attention(r: KeyReader, src: str, dst: str, out: dict) -> None:
    """HF DetrSelfAttention / DetrCrossAttention: separate q, k, v and o projections."""
    for theirs, ours in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj")):
        _linear(r, f"{src}.{theirs}", f"{dst}/{ours}", out)
    _linear(r, src + ".o_proj", dst + "/out_proj", out)


def _count(keys, pattern: str) -> int:
    ids = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(ids) + 1 if ids else 0


def _heads(r: KeyReader, cls: str, box: str, out: dict) -> None:
    _linear(r, cls, "class_embed", out)
    for i in range(3):
        _linear(r, f"{box}.layers.{i}", f"bbox_embed/layers_{i}", out)


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def facebook_to_params(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """facebookresearch/detr `model` state_dict -> our flat params (raises ConversionError)."""
    sd = state_dict
    r = KeyReader(sd)
    arch = infer_resnet(sd, FB_BACKBONE, "torchvision")
    out = resnet_params(r, FB_BACKBONE, "torchvision", arch["depth"])
    if "backbone.1.row_embed.weight" in sd:
        out["position_embedding/row_embed/embedding"] = r.get("backbone.1.row_embed.weight")
        out["position_embedding/col_embed/embedding"] = r.get("backbone.1.col_embed.weight")
    w = r.get("input_proj.weight")
    if w is not None:
        out["input_proj/kernel"] = conv_kernel(w).astype(np.float32)
    b = r.get("input_proj.bias")
    if b is not None:
        out["input_proj/bias"] = b.astype(np.float32)
    q = r.get("query_embed.weight")
    if q is not None:
        out["query_embed"] = q.astype(np.float32)
    for i in range(_count(sd, r"transformer\.encoder\.layers\.(\d+)\.")):
        s, d = f"transformer.encoder.layers.{i}", f"transformer/encoder_layers_{i}"
        _packed_attention(r, s + ".self_attn", d + "/self_attn", out)
        _linear(r, s + ".linear1", d + "/ffn/linear1", out)
        _linear(r, s + ".linear2", d + "/ffn/linear2", out)
        _layernorm(r, s + ".norm1", d + "/norm1", out)
        _layernorm(r, s + ".norm2", d + "/norm2", out)
    if "transformer.encoder.norm.weight" in sd:  # pre-norm models only
        _layernorm(r, "transformer.encoder.norm", "transformer/encoder_norm", out)
    for i in range(_count(sd, r"transformer\.decoder\.layers\.(\d+)\.")):
        s, d = f"transformer.decoder.layers.{i}", f"transformer/decoder_layers_{i}"
        _packed_attention(r, s + ".self_attn", d + "/self_attn", out)
        _packed_attention(r, s + ".multihead_attn", d + "/multihead_attn", out)
        _linear(r, s + ".linear1", d + "/ffn/linear1", out)
        _linear(r, s + ".linear2", d + "/ffn/linear2", out)
        for n in (1, 2, 3):
            _layernorm(r, f"{s}.norm{n}", f"{d}/norm{n}", out)
    _layernorm(r, "transformer.decoder.norm", "transformer/decoder_norm", out)
    _heads(r, "class_embed", "bbox_embed", out)
    r.raise_if_bad("facebookresearch/detr state_dict", _ignored)
    return out


_HF_V4_RENAMES = (
    (r"^model\.backbone\.conv_encoder\.model\.", "model.backbone.model."),
    (r"^model\.backbone\.position_embedding\.", "model.position_embedding."),
    (r"\.(self_attn|encoder_attn)\.out_proj\.", r".\1.o_proj."),
    (r"^(model\.(?:en|de)coder\.layers\.\d+)\.(fc1|fc2)\.", r"\1.mlp.\2."),
)


def normalise_hf_keys(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames transformers 4.x DETR keys to the 5.x names (a no-op on 5.x state_dicts)."""
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in _HF_V4_RENAMES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def hf_to_params(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF `DetrForObjectDetection` state_dict -> our flat params (raises ConversionError).

    The backbone may be HF's native ResNet (`use_timm_backbone=False`) or timm's (torchvision
    names, as in the hub's facebook/detr-resnet-50).
    """
    sd = normalise_hf_keys(state_dict)
    r = KeyReader(sd)
    layout = detect_layout(sd, HF_BACKBONE)
    arch = infer_resnet(sd, HF_BACKBONE, layout)
    out = resnet_params(r, HF_BACKBONE, layout, arch["depth"])
    if "model.position_embedding.row_embeddings.weight" in sd:
        pe = "model.position_embedding."
        out["position_embedding/row_embed/embedding"] = r.get(pe + "row_embeddings.weight")
        out["position_embedding/col_embed/embedding"] = r.get(pe + "column_embeddings.weight")
    w, b = r.get("model.input_projection.weight"), r.get("model.input_projection.bias")
    if w is not None:
        out["input_proj/kernel"] = conv_kernel(w).astype(np.float32)
    if b is not None:
        out["input_proj/bias"] = b.astype(np.float32)
    q = r.get("model.query_position_embeddings.weight")
    if q is not None:
        out["query_embed"] = q.astype(np.float32)
    for i in range(_count(sd, r"model\.encoder\.layers\.(\d+)\.")):
        s, d = f"model.encoder.layers.{i}", f"transformer/encoder_layers_{i}"
        _split_attention(r, s + ".self_attn", d + "/self_attn", out)
        _layernorm(r, s + ".self_attn_layer_norm", d + "/norm1", out)
        _linear(r, s + ".mlp.fc1", d + "/ffn/linear1", out)
        _linear(r, s + ".mlp.fc2", d + "/ffn/linear2", out)
        _layernorm(r, s + ".final_layer_norm", d + "/norm2", out)
    for i in range(_count(sd, r"model\.decoder\.layers\.(\d+)\.")):
        s, d = f"model.decoder.layers.{i}", f"transformer/decoder_layers_{i}"
        _split_attention(r, s + ".self_attn", d + "/self_attn", out)
        _layernorm(r, s + ".self_attn_layer_norm", d + "/norm1", out)
        _split_attention(r, s + ".encoder_attn", d + "/multihead_attn", out)
        _layernorm(r, s + ".encoder_attn_layer_norm", d + "/norm2", out)
        _linear(r, s + ".mlp.fc1", d + "/ffn/linear1", out)
        _linear(r, s + ".mlp.fc2", d + "/ffn/linear2", out)
        _layernorm(r, s + ".final_layer_norm", d + "/norm3", out)
    _layernorm(r, "model.decoder.layernorm", "transformer/decoder_norm", out)
    _heads(r, "class_labels_classifier", "bbox_predictor", out)
    r.raise_if_bad("Hugging Face DetrForObjectDetection state_dict", _ignored)
    return out


_HF_RESNET_TO_TORCHVISION = (
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (r"^encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.", "L{s}.{b}.downsample.0."),
    (r"^encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.", "L{s}.{b}.downsample.1."),
    (r"^encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.", "L{s}.{b}.conv{i}."),
    (r"^encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.", "L{s}.{b}.bn{i}."),
)


def _hf_resnet_key_to_torchvision(key: str) -> str | None:
    for pattern, template in _HF_RESNET_TO_TORCHVISION:
        m = re.match(pattern, key)
        if m:
            g = m.groups()
            name = template.replace("L{s}", f"layer{int(g[0]) + 1}") if g else template
            name = name.format(b=g[1] if len(g) > 1 else "", i=int(g[2]) + 1 if len(g) > 2 else "")
            return name + key[m.end() :]
    return None


def hf_to_facebook_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF `DetrForObjectDetection` state_dict -> the facebookresearch/detr key layout.

    Follows the public mapping (transformers' convert_detr_original_pytorch_checkpoint script,
    inverted): q/k/v projections are packed into `in_proj_weight`/`in_proj_bias` (q; k; v).
    `num_batches_tracked` is dropped (the original's FrozenBatchNorm2d has none).
    """
    sd = normalise_hf_keys(state_dict)
    layout = detect_layout(sd, HF_BACKBONE)
    out: dict[str, np.ndarray] = {}
    left = []
    rules = (
        (r"^model\.position_embedding\.row_embeddings\.", "backbone.1.row_embed."),
        (r"^model\.position_embedding\.column_embeddings\.", "backbone.1.col_embed."),
        (r"^model\.input_projection\.", "input_proj."),
        (r"^model\.query_position_embeddings\.", "query_embed."),
        (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
        (r"^class_labels_classifier\.", "class_embed."),
        (r"^bbox_predictor\.", "bbox_embed."),
        (
            r"^model\.(en|de)coder\.layers\.(\d+)\.self_attn\.o_proj\.",
            r"transformer.\1coder.layers.\2.self_attn.out_proj.",
        ),
        (
            r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.o_proj\.",
            r"transformer.decoder.layers.\1.multihead_attn.out_proj.",
        ),
        (
            r"^model\.(en|de)coder\.layers\.(\d+)\.mlp\.fc1\.",
            r"transformer.\1coder.layers.\2.linear1.",
        ),
        (
            r"^model\.(en|de)coder\.layers\.(\d+)\.mlp\.fc2\.",
            r"transformer.\1coder.layers.\2.linear2.",
        ),
        (
            r"^model\.(en|de)coder\.layers\.(\d+)\.self_attn_layer_norm\.",
            r"transformer.\1coder.layers.\2.norm1.",
        ),
        (
            r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.",
            r"transformer.decoder.layers.\1.norm2.",
        ),
        (
            r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.",
            r"transformer.encoder.layers.\1.norm2.",
        ),
        (
            r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.",
            r"transformer.decoder.layers.\1.norm3.",
        ),
    )
    packed: dict[str, dict[str, np.ndarray]] = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith(HF_BACKBONE):
            sub = k[len(HF_BACKBONE) :]
            name = _hf_resnet_key_to_torchvision(sub) if layout == "hf" else sub
            if name is None:
                left.append(k)
            else:
                out[FB_BACKBONE + name] = np.asarray(v)
            continue
        m = re.match(
            r"^model\.(en|de)coder\.layers\.(\d+)\.(self_attn|encoder_attn)\.([qkv])_proj\.(weight|bias)$",
            k,
        )
        if m:
            attn = "self_attn" if m.group(3) == "self_attn" else "multihead_attn"
            base = f"transformer.{m.group(1)}coder.layers.{m.group(2)}.{attn}.in_proj_{m.group(5)}"
            packed.setdefault(base, {})[m.group(4)] = np.asarray(v)
            continue
        for pattern, repl in rules:
            if re.match(pattern, k):
                out[re.sub(pattern, repl, k)] = np.asarray(v)
                break
        else:
            left.append(k)
    for base, parts in packed.items():
        if set(parts) != {"q", "k", "v"}:
            left.append(f"{base} (only {sorted(parts)} of q, k, v)")
            continue
        out[base] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    if left:
        raise ConversionError(
            f"HF state_dict: {len(left)} keys with no facebookresearch name: {left}"
        )
    return out


def infer_model_fields(params: dict[str, np.ndarray], backbone: dict[str, int]) -> dict:
    """Config fields (`num_classes` and `model.*` shapes) implied by converted params.

    `nheads` and `dilation` do not show in the weights; the caller supplies them.
    """
    keys = list(params)
    ffn = [k for k in keys if k.endswith("ffn/linear1/bias")]
    return {
        "num_classes": int(params["class_embed/bias"].shape[0]) - 1,
        "model.backbone.name": f"resnet{backbone['depth']}",
        "model.backbone.width": backbone["width"],
        "model.hidden_dim": int(params["query_embed"].shape[1]),
        "model.queries.num_queries": int(params["query_embed"].shape[0]),
        "model.transformer.enc_layers": _count(keys, r"transformer/encoder_layers_(\d+)/"),
        "model.transformer.dec_layers": _count(keys, r"transformer/decoder_layers_(\d+)/"),
        "model.transformer.dim_feedforward": int(params[ffn[0]].shape[0]) if ffn else 2048,
        "model.transformer.pre_norm": "transformer/encoder_norm/scale" in params,
        "model.neck.position_embedding": (
            "learned" if "position_embedding/row_embed/embedding" in params else "sine"
        ),
    }
