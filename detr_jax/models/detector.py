"""The set detector: handed its parts (backbone, neck, transformer, query generator, heads).

    images, pixel_mask -> backbone -> {level: Feature} -> neck -> tokens, pos, mask
                       -> queries  -> query_pos, tgt, self_attn_mask, num_groups
                       -> transformer -> hs [L, B, Q, D] -> heads -> pred_logits, pred_boxes, ...

Parameter tree (the original DETR's state_dict names, unchanged since before the parts):
`backbone/...` and `transformer/...` under the part's name; the neck (`input_proj`,
`position_embedding`), the queries (`query_embed`, `group_query_embed`) and the heads
(`class_embed`, `bbox_embed`, `dense_class_head`) share the detector's scope (`nn.share_scope`),
so the converters' key maps and checkpoints written before the parts existed still fit.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from detr_jax.models.backbones.base import Feature

_SHARED_SCOPE_PARTS = ("neck", "queries", "heads")


class SetDetector(nn.Module):
    """A DETR-family detector assembled from parts (see detr_jax/models/__init__.py)."""

    backbone: nn.Module
    neck: nn.Module
    transformer: nn.Module
    queries: nn.Module
    heads: nn.Module

    def setup(self) -> None:
        for part in _SHARED_SCOPE_PARTS:
            nn.share_scope(self, getattr(self, part))

    def __call__(
        self,
        images: jax.Array,
        pixel_mask: jax.Array,
        train: bool = False,
        targets: dict | None = None,
    ) -> dict[str, Any]:
        """Predicts a set of boxes per image.

        Args:
          images: float [B, H, W, 3], normalised; pixel_mask: bool [B, H, W], True on real pixels.
          train: dropout, DropPath and BatchNorm statistics in training mode (and the training
            query groups).
          targets: the batch's ground truth (`labels`, `boxes`, `box_valid`), for query
            generators that build queries from it (denoising); unused by learned queries.

        Returns:
          the heads' outputs: `pred_logits` float32 [L, B, Q, C + 1] (softmax heads, last index
          = no object) or [L, B, Q, C] (sigmoid heads: Deformable DETR),
          `pred_boxes` float32 [L, B, Q, 4] normalised cxcywh (one slice per decoder layer),
          the heads' extras (`dense_logits`, ...), and `num_query_groups` (a Python int: the
          query generator's groups, matched separately by the loss); with denoising queries
          (training) `dn_outputs` and `dn_meta` (see `split_denoising`).
        """
        feats = dict(self.backbone(images, pixel_mask, train=train))
        feats["input"] = Feature(images, pixel_mask, 1)  # for necks that resize the pixel mask
        memory_in = dict(self.neck(feats, train=train))
        # Mask heads read backbone levels beside the neck's tokens (DETR's FPN head: C2-C4).
        memory_in.setdefault("features", feats)
        queries = self.queries(images.shape[0], train=train, targets=targets)
        # The heads are handed to the transformer: refining decoders and two-stage encoders
        # call their box / proposal heads (the same params as the final predictions).
        decoded = self.transformer(memory_in, queries, train=train, heads=self.heads)
        outputs = dict(self.heads(decoded, memory_in, train=train))
        outputs["num_query_groups"] = queries["num_groups"]
        if queries.get("dn_meta") is not None:
            outputs.update(split_denoising(outputs, queries["dn_meta"]))
        return outputs

    def param_rules(self) -> list[tuple[str, Any]]:
        """The parts' own parameter-group rules (regex on full param paths, value), e.g. the
        backbone's frozen stages; the optimiser puts them before the config's rules."""
        rules = []
        for part in ("backbone", "neck", "transformer", "queries", "heads"):
            module = getattr(self, part)
            prefix = "" if part in _SHARED_SCOPE_PARTS else f"{part}/"
            for pattern, value in getattr(module, "param_rules", lambda: [])():
                body = pattern[1:] if pattern.startswith("^") else f"(.*/)?{pattern}"
                rules.append((f"^{prefix}{body}", value))
        return rules


def split_denoising(outputs: dict[str, Any], dn_meta: dict[str, Any]) -> dict[str, Any]:
    """Splits the first `dn_meta["num_dn"]` queries (the denoising ones) off the predictions.

    Returns {`pred_logits` / `pred_boxes` [L, B, Q, ..] of the matching queries, `dn_outputs`
    = {`pred_logits`, `pred_boxes`} [L, B, Q_dn, ..], `dn_meta`} (losses/denoising.py)."""
    n = int(dn_meta["num_dn"])
    keys = ("pred_logits", "pred_boxes")
    return {**{k: outputs[k][:, :, n:] for k in keys},
            "dn_outputs": {k: outputs[k][:, :, :n] for k in keys}, "dn_meta": dict(dn_meta)}
