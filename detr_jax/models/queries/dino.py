"""DINO's queries (Zhang et al., 2022): selected anchors, learned content, denoising groups.

The anchors (reference boxes) of the Q matching queries are the transformer's top-Q encoder
proposals (transformers/dino.py); this generator gives what goes with them:

- content: with `mixed` (DINO's mixed query selection) a learned `tgt_embed` [Q, D], the same
  for every image; without, None (the transformer derives the content from the selected
  proposals, as two-stage Deformable DETR: "pure" query selection);
- in training, the denoising queries (`dn_number` > 0): noised ground-truth copies
  (queries/denoising.py) whose content is `label_enc` (an embedding of the noised label, C + 1
  rows: C is padding) and whose anchors are the noised boxes, put FIRST; contrastive (DINO:
  positives and negatives) or positives only (DN-DETR);
- in training with `num_groups` K > 1, Group DETR's one-to-many groups: K content sets
  `tgt_embed` [K * Q, D] on the same anchors, each matched on its own (needs `mixed`);
- the self-attention mask over [denoising, matching] queries (denoising_attn_mask).

Params (detector scope): `tgt_embed` [K * Q, D] (group 0 first; with `mixed`), `label_enc`
[C + 1, D] (with `dn_number` > 0).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from detr_jax.models.queries.denoising import contrastive_denoising, denoising_attn_mask
from detr_jax.models.queries.groups import group_self_attn_mask


class DinoQueries(nn.Module):
    """The DINO-style query set (docs/interfaces.md, "Query generator").

    Attributes:
      num_queries: Q, the encoder proposals kept as anchors (DINO: 900).
      num_classes, hidden_dim, dtype: set by the builder.
      mixed: learned content queries (mixed query selection); False: content from proposals.
      dn_number: the denoising query budget (0: no denoising), see `num_denoising_groups`.
      contrastive: negatives beside the positives (DINO's CDN); False: DN-DETR's denoising.
      label_noise_ratio, box_noise_scale: the label flip (probability ratio * 0.5) and box noise
        of queries/denoising.py.
      max_objects: the object count the denoising groups are sized for (0: the batch's padded
        ground-truth slots, `config.max_boxes`).
      num_groups: Group DETR groups of matching queries in training (1: none).
      init_std: std of the content and label embeddings' normal init.
    """

    num_queries: int = 900
    num_classes: int = 91
    hidden_dim: int = 256
    dtype: Any = None
    mixed: bool = True
    dn_number: int = 100
    contrastive: bool = True
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    max_objects: int = 0
    num_groups: int = 1
    init_std: float = 1.0

    def part_problems(self) -> list[str]:
        """One line per field combination that cannot work (checked at start-up)."""
        lines = []
        if self.num_groups > 1 and not self.mixed:
            lines.append("model.queries.num_groups > 1 needs model.queries.mixed=True (groups "
                         "on the same anchors differ only by their learned content)")
        if self.dn_number < 0 or self.num_groups < 1 or self.num_queries < 1:
            lines.append("model.queries: dn_number must be >= 0, num_groups and num_queries "
                         ">= 1")
        return lines

    @nn.compact
    def __call__(self, batch_size: int, train: bool = False, targets: dict | None = None
                 ) -> dict[str, Any]:
        """The query set: `tgt` [B, K' * Q, D] or None, `num_queries` Q (the transformer
        selects that many anchors), `num_groups` K' (K in training, else 1), `self_attn_mask`
        bool [B, Q_dn + K' Q, Q_dn + K' Q] or None, and, in training with denoising and
        `targets` (`labels` int [B, G], `boxes` float [B, G, 4] normalised cxcywh, `box_valid`
        bool [B, G]): `dn` = {`tgt` [B, Q_dn, D], `reference_logits` [B, Q_dn, 4]
        (inverse-sigmoid noised cxcywh)} and `dn_meta` (docs/interfaces.md)."""
        dtype = self.dtype or jnp.float32
        q, d = self.num_queries, self.hidden_dim
        groups = self.num_groups if train else 1
        tgt = None
        if self.mixed:
            embed = self.param("tgt_embed", nn.initializers.normal(self.init_std),
                               (self.num_groups * q, d))
            embed = embed[: groups * q].astype(dtype)
            tgt = jnp.broadcast_to(embed[None], (batch_size,) + embed.shape)
        out: dict[str, Any] = {"query_pos": None, "tgt": tgt, "num_queries": q,
                               "num_groups": groups, "self_attn_mask": None}
        if groups > 1:
            out["self_attn_mask"] = group_self_attn_mask(groups, q)
        if self.dn_number <= 0:
            return out
        label_enc = nn.Embed(self.num_classes + 1, d, embedding_init=nn.initializers.normal(
            self.init_std), dtype=dtype, name="label_enc")
        if not (train and targets is not None):
            if self.is_initializing():
                label_enc(jnp.zeros((1,), jnp.int32))
            return out
        dn = contrastive_denoising(
            self.make_rng("dropout"), targets["labels"], targets["boxes"], targets["box_valid"],
            num_classes=self.num_classes, dn_number=self.dn_number,
            label_noise_ratio=self.label_noise_ratio, box_noise_scale=self.box_noise_scale,
            max_objects=self.max_objects or None, contrastive=self.contrastive)
        out["dn"] = {"tgt": label_enc(dn["labels"]), "reference_logits": dn["reference_logits"]}
        out["dn_meta"] = {"num_dn": dn["num_dn"], "dn_groups": dn["num_groups"],
                          "dn_positive": dn["positive"], "dn_gt_index": dn["gt_index"],
                          "dn_valid": dn["valid"]}
        out["self_attn_mask"] = denoising_attn_mask(dn["num_dn"], dn["num_groups"], groups * q,
                                                    dn["valid"], match_groups=groups)
        return out
