"""The set criterion: match once per decoder layer, then apply named loss terms with weights.

As facebookresearch/detr's SetCriterion: `terms` maps a registered term name to its settings
(detr_jax/losses/__init__.py, `LOSS_TERMS`), `weights` maps each loss a term returns to its
weight. Terms that need matching see the outputs of every decoder layer ([L, B, Q, ...], all
layers with `aux_loss`, else the last) and return per-layer losses [L]; others get the raw
outputs and return scalars (`dense`) or [L] losses of the same layers (`denoising`: its
`dn_outputs` are cut to the final layer too without `aux_loss`). The total is sum over layers
of the weighted per-layer losses, plus the weighted scalars. Losses without a weight
(`class_error`, `cardinality_error`) are only logged.

Shapes (docs/interfaces.md): outputs `pred_logits` [L, B, Q, C+1] (softmax heads, no object
last) or [L, B, Q, C] (sigmoid heads, no no-object column; terms tell them apart through
`Targets.num_classes`), `pred_boxes` [L, B, Q, 4] normalised cxcywh; batch `labels` [B, G]
int32, `boxes` [B, G, 4] normalised cxcywh, `box_valid` [B, G] bool, optional `image_valid`
[B] bool.

Normalisation of the box losses: the original divides the summed L1 / GIoU losses by
`num_boxes = all_reduce(#targets) / world_size` on each device and DDP then averages the
gradients over the devices, which equals dividing the global sum by the global box count. Here a
step is one jit over the global (possibly sharded) batch, so `max(#valid boxes, 1)` over the
batch reproduces the original exactly.

Two-stage encoder proposals (Deformable DETR's `enc_outputs`: `pred_logits` [B, N, C],
`pred_boxes` [B, N, 4], N = all feature positions) are one more "layer": the same matched terms,
with a matching of their own, against the batch's boxes with every label set to 0 (the
original's `bin_targets`: proposals are class-agnostic foreground), or, with
`encoder_class_agnostic=False`, against the real labels (DINO's `interm_outputs` loss, a
per-pixel class signal on the encoder). Their losses are named `<loss>_enc` and weighted by
`weights[<loss>]`.

Masks (docs/interfaces.md "Segmentation"): `pred_masks` [L_m, B, Q, h, w] ride along with the
layers (cut to the last with `aux_loss` off, folded like the other predictions with Group DETR
groups, `batch["masks"]` tiled with the targets); mask models still give `pred_boxes` (MaskFormer
derives them from its masks), so the criterion keeps requiring them. Matching costs that read
masks (`mask`, `dice`: `matching.cost_terms.cost_term_inputs`) are computed one layer at a time
(`lax.map`: [B, Q, num_points] samples per layer, not L times that), need `pred_masks` on every
matched layer, and draw their points from `batch["loss_rng"]` (stream 1 of
`losses.masks.loss_rng`), a different key per layer; the cost of all layers then goes to the
matcher in one call. Mask loss terms (registered with `needs_masks`) are skipped on two-stage
encoder proposals that have no `pred_masks`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from detr_jax.losses.masks import loss_rng
from detr_jax.losses.targets import Targets
from detr_jax.matching.base import Matcher, match_to_query_targets
from detr_jax.matching.cost_terms import COST_TERMS, cost_term_inputs
from detr_jax.matching.costs import matching_cost
from detr_jax.models.queries.groups import fold_query_groups


def _flatten_layers(x: jax.Array) -> jax.Array:
    """[L, B, ...] -> [L*B, ...]."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _last_layer(outputs: dict) -> dict:
    """`outputs` with the per-layer arrays (`pred_logits`, `pred_boxes`, and those of
    `dn_outputs`, [L, ...]) cut to the final layer [1, ...]: what terms without matching see
    with `aux_loss` off, so that their [L] losses follow the matched ones."""
    cut = {k: outputs[k][-1:] for k in ("pred_logits", "pred_boxes") if k in outputs}
    if outputs.get("dn_outputs") is not None:
        cut["dn_outputs"] = {k: v[-1:] for k, v in outputs["dn_outputs"].items()}
    return dict(outputs, **cut)


def _fold_mask_groups(outputs: dict, folded: dict, batch: dict, tiled: dict,
                      num_groups: int) -> tuple[dict, dict]:
    """`fold_query_groups` for `pred_masks` [L, B, K*Q, h, w] -> [L, K*B, Q, h, w] (group-major,
    as the other predictions) and the batch's `masks` / `is_thing` tiled K times."""
    if num_groups == 1 or outputs.get("pred_masks") is None:
        return folded, tiled
    x = outputs["pred_masks"]
    num_layers, bsz, total = x.shape[:3]
    if total % num_groups:
        raise ValueError(f"pred_masks has {total} queries, not a multiple of {num_groups} groups")
    x = x.reshape((num_layers, bsz, num_groups, total // num_groups) + x.shape[3:])
    x = x.transpose((0, 2, 1) + tuple(range(3, x.ndim)))
    folded = dict(folded, pred_masks=x.reshape((num_layers, num_groups * bsz) + x.shape[3:]))
    tiled = dict(tiled)
    for key in ("masks", "is_thing"):
        if batch.get(key) is not None:
            tiled[key] = jnp.concatenate([batch[key]] * num_groups, axis=0)
    return folded, tiled


class Criterion:
    """`criterion(outputs, batch, query_valid=None, match=None) -> (loss, metrics)`.

    Args (constructor):
      terms: {term name: settings dict}, in the order the losses are summed.
      weights: {loss name: weight}; every name must be produced by some term.
      term_fns: {term name: (fn, needs_matching, ...)} (the registry, `LOSS_TERMS`).
      matcher: a detr_jax.matching Matcher; costs: {cost term: weight or {weight, **kw}}
        of the matching cost (detr_jax.matching.matching_cost, in this order).
      aux_loss: apply the matched terms to every decoder layer (else the last only).
      num_classes: C, when given the logits must have C + 1 (softmax, no-object last) or C
        (sigmoid) columns.
      encoder_class_agnostic: two-stage proposals are matched and classified as one
        foreground class (Deformable DETR), else with the batch's labels (DINO).
    """

    def __init__(self, terms: Mapping[str, Mapping[str, Any]], weights: Mapping[str, float],
                 term_fns: Mapping[str, tuple], matcher: Matcher,
                 costs: Mapping[str, float], aux_loss: bool = True,
                 num_classes: int | None = None, encoder_class_agnostic: bool = True):
        unknown = [t for t in terms if t not in term_fns]
        if unknown:
            raise ValueError(f"loss.terms: unknown {unknown}; choose from {tuple(term_fns)}")
        self.terms = {name: (tuple(term_fns[name][:2]), dict(settings))
                      for name, settings in terms.items()}
        # Terms without matching that take a keyword-only `num_classes` (denoising) get C.
        for (fn, needs_matching), settings in self.terms.values():
            params = inspect.signature(fn).parameters
            if (not needs_matching and num_classes is not None and "num_classes" in params
                    and params["num_classes"].kind is inspect.Parameter.KEYWORD_ONLY):
                settings.setdefault("num_classes", int(num_classes))
        self.weights = dict(weights)
        self.matcher, self.costs, self.aux_loss = matcher, dict(costs), aux_loss
        self.num_classes = num_classes
        self.encoder_class_agnostic = bool(encoder_class_agnostic)
        # Matching costs that read masks, and loss terms that do (skipped without pred_masks on
        # encoder proposals).
        self.mask_costs = [n for n in self.costs if n in COST_TERMS and cost_term_inputs(n)]
        self.mask_terms = {n for n in terms if getattr(term_fns[n], "needs_masks", False)}

    def _match(self, logits, boxes, gt_labels, gt_boxes, gt_valid, query_valid, masks=None):
        """One matcher call for all layers: [L, B, Q, *] predictions -> match [L, B, G].

        `masks` (for mask costs): (pred_masks [L, B, Q, h, w], gt masks [B, G, H, W], rng).
        """
        num_layers, batch = logits.shape[:2]
        tile = lambda x: _flatten_layers(jnp.broadcast_to(x, (num_layers,) + x.shape))
        if self.mask_costs:
            cost = self._mask_cost(logits, boxes, gt_labels, gt_boxes, gt_valid, query_valid,
                                   masks)
        else:
            cost = matching_cost(
                _flatten_layers(logits), _flatten_layers(boxes), tile(gt_labels),
                tile(gt_boxes), tile(gt_valid), self.costs, query_valid=tile(query_valid),
            )  # [L*B, Q, G]
        match = self.matcher(cost, tile(gt_valid))
        return match.reshape(num_layers, batch, gt_labels.shape[-1]).astype(jnp.int32)

    def _mask_cost(self, logits, boxes, gt_labels, gt_boxes, gt_valid, query_valid, masks):
        """The [L*B, Q, G] cost with mask terms, one layer at a time (lax.map)."""
        pred_masks, gt_masks, rng = (None, None, None) if masks is None else masks
        if pred_masks is None or gt_masks is None:
            raise ValueError(f"matcher.costs {self.mask_costs} need outputs['pred_masks'] and "
                             "batch['masks'] (two-stage encoder proposals have no masks)")
        if pred_masks.shape[:3] != logits.shape[:3]:
            raise ValueError(f"matcher.costs {self.mask_costs} need pred_masks on every matched "
                             f"layer: [L, B, Q, h, w] with [L, B, Q] = {logits.shape[:3]}, got "
                             f"{pred_masks.shape} (DETR's mask head predicts only the last "
                             "layer: match it by boxes)")
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(logits.shape[0]))

        def layer(args):
            lg, bx, pm, key = args
            return matching_cost(lg, bx, gt_labels, gt_boxes, gt_valid, self.costs,
                                 query_valid=query_valid, pred_masks=pm, gt_masks=gt_masks,
                                 rng=key)

        return _flatten_layers(jax.lax.map(layer, (logits, boxes, pred_masks, keys)))

    def targets(self, outputs: dict, batch: dict, query_valid: jax.Array | None = None,
                match: jax.Array | None = None) -> Targets:
        """The matched targets of `outputs` (already cut to the layers used)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        num_layers, bsz, num_q, num_logits = logits.shape
        gt_labels = jnp.asarray(batch["labels"], jnp.int32)
        gt_boxes = jnp.asarray(batch["boxes"], jnp.float32)
        gt_valid = jnp.asarray(batch["box_valid"], bool)
        image_valid = batch.get("image_valid")
        image_valid = (jnp.ones((bsz,), bool) if image_valid is None
                       else jnp.asarray(image_valid, bool))
        qv = (jnp.ones((bsz, num_q), bool) if query_valid is None
              else jnp.asarray(query_valid, bool))
        if match is None:
            masks = None
            if self.mask_costs:
                masks = (outputs.get("pred_masks"), batch.get("masks"), loss_rng(batch, 1))
            match = self._match(logits, boxes, gt_labels, gt_boxes, gt_valid, qv, masks)
        match = jax.lax.stop_gradient(match)
        tile = lambda x: _flatten_layers(jnp.broadcast_to(x, (num_layers,) + x.shape))
        # The no-object index is C for both kinds of logits: the last of C + 1 softmax logits,
        # or, for C sigmoid logits, the all-zero one-hot target.
        num_classes = num_logits - 1 if self.num_classes is None else int(self.num_classes)
        target_classes, _, matched = match_to_query_targets(
            _flatten_layers(match), tile(gt_labels), tile(gt_boxes), tile(gt_valid), num_q,
            num_classes,
        )
        return Targets(
            match=match,
            target_classes=target_classes.reshape(num_layers, bsz, num_q),
            matched=matched.reshape(num_layers, bsz, num_q),
            gt_labels=gt_labels, gt_boxes=gt_boxes, gt_valid=gt_valid,
            query_valid=qv, image_valid=image_valid,
            query_weight=(qv & image_valid[:, None]).astype(jnp.float32),
            num_boxes=jnp.maximum(jnp.sum(gt_valid).astype(jnp.float32), 1.0),
            num_classes=num_classes,
        )

    def encoder_values(self, enc_outputs: Mapping[str, jax.Array], batch: dict
                       ) -> dict[str, jax.Array]:
        """The matched terms on two-stage encoder proposals: {`<loss>_enc`: scalar}.

        `enc_outputs`: `pred_logits` float [B, N, C] (sigmoid), `pred_boxes` [B, N, 4]
        normalised cxcywh, optional `query_valid` bool [B, N] (False: a proposal left out of
        matching and of the class loss, e.g. at padded positions; default all valid, as the
        original). They are matched on their own (this criterion's matcher and costs) to the
        batch's boxes with all labels 0 (`encoder_class_agnostic`, else with their labels), and
        normalised by the same `num_boxes`.
        """
        logits = jnp.asarray(enc_outputs["pred_logits"], jnp.float32)[None]
        boxes = jnp.asarray(enc_outputs["pred_boxes"], jnp.float32)[None]
        if logits.ndim != 4 or boxes.shape != logits.shape[:3] + (4,):
            raise ValueError(f"expected enc_outputs pred_logits [B,N,C] and pred_boxes [B,N,4], "
                             f"got {logits.shape[1:]} and {boxes.shape[1:]}")
        layer = {"pred_logits": logits, "pred_boxes": boxes}
        if enc_outputs.get("pred_masks") is not None:
            layer["pred_masks"] = jnp.asarray(enc_outputs["pred_masks"], jnp.float32)[None]
        enc_batch = batch
        if self.encoder_class_agnostic:
            labels = jnp.zeros_like(jnp.asarray(batch["labels"], jnp.int32))
            enc_batch = dict(batch, labels=labels)
        t = self.targets(layer, enc_batch, enc_outputs.get("query_valid"))
        values: dict[str, jax.Array] = {}
        for name, ((fn, needs_matching), settings) in self.terms.items():
            if needs_matching and (name not in self.mask_terms or "pred_masks" in layer):
                values.update(fn(layer, enc_batch, t, **settings))
        return {f"{k}_enc": (v[-1] if v.ndim == 1 else v) for k, v in values.items()}

    def __call__(self, outputs: dict, batch: dict, query_valid: jax.Array | None = None,
                 match: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Total loss (float32 scalar) and metrics: each loss of the final layer (`loss_ce`,
        ...), `<loss>_<i>` for the auxiliary layers i = 0..L-2, `<loss>_enc` for two-stage
        encoder proposals (`outputs["enc_outputs"]`, see `encoder_values`), the scalar terms'
        losses, the logged metrics, `num_boxes` and `loss`.

        `query_valid` [B, Q] bool leaves queries out of matching and the class loss; `match`
        [L, B, G] (or [B, G] with aux_loss off) bypasses the matcher (of the decoder layers;
        encoder proposals are always matched). With Group DETR groups
        (`outputs["num_query_groups"]` K > 1) each group is matched on its own and the losses
        are averaged over the groups (so are the logged errors).
        """
        num_groups = int(outputs.get("num_query_groups", 1))
        set_outputs, set_batch = fold_query_groups(outputs, batch, num_groups)
        set_outputs, set_batch = _fold_mask_groups(outputs, set_outputs, batch, set_batch,
                                                   num_groups)
        logits = jnp.asarray(set_outputs["pred_logits"], jnp.float32)
        boxes = jnp.asarray(set_outputs["pred_boxes"], jnp.float32)
        if logits.ndim != 4 or boxes.shape != logits.shape[:3] + (4,):
            raise ValueError(f"expected pred_logits [L,B,Q,C(+1)] and pred_boxes [L,B,Q,4], got "
                             f"{logits.shape} and {boxes.shape}")
        c = self.num_classes
        if c is not None and logits.shape[-1] not in (c, c + 1):
            raise ValueError(f"pred_logits has {logits.shape[-1]} classes; num_classes={c} needs "
                             f"{c + 1} (softmax with no-object) or {c} (sigmoid)")
        total_layers = logits.shape[0]
        if not self.aux_loss:
            logits, boxes = logits[-1:], boxes[-1:]
        layered = dict(set_outputs, pred_logits=logits, pred_boxes=boxes)
        if set_outputs.get("pred_masks") is not None:
            masks = jnp.asarray(set_outputs["pred_masks"], jnp.float32)
            if masks.ndim != 5 or masks.shape[1:3] != logits.shape[1:3]:
                raise ValueError(f"expected pred_masks [L, B, Q, h, w] with [B, Q] = "
                                 f"{logits.shape[1:3]}, got {masks.shape}")
            layered["pred_masks"] = masks if self.aux_loss else masks[-1:]
        if match is not None:
            match = jnp.asarray(match, jnp.int32)
            match = match[None] if match.ndim == 2 else match
            if match.shape[0] == total_layers and logits.shape[0] != total_layers:
                match = match[-logits.shape[0]:]
            expected = (logits.shape[0], logits.shape[1], set_batch["labels"].shape[-1])
            if match.shape != expected:
                raise ValueError(f"match must be [L,B,G]={expected}, got {match.shape}")
        raw_outputs = outputs if self.aux_loss else _last_layer(outputs)
        t = None
        if any(needs for (_, needs), _ in self.terms.values()):
            t = self.targets(layered, set_batch, query_valid, match)
        values: dict[str, jax.Array] = {}
        for (fn, needs_matching), settings in self.terms.values():
            if needs_matching:
                values.update(fn(layered, set_batch, t, **settings))
            else:
                values.update(fn(raw_outputs, batch, None, **settings))
        enc_values: dict[str, jax.Array] = {}
        if outputs.get("enc_outputs") is not None and t is not None:
            enc_values = self.encoder_values(outputs["enc_outputs"], batch)
        missing = [k for k in self.weights if k not in values]
        if missing:
            raise ValueError(f"loss.weights: {missing} are produced by no term in loss.terms "
                             f"(they produce {sorted(values)})")
        per_layer = None
        scalar = []
        for name, w in self.weights.items():
            v = values[name]
            if v.ndim == 1:
                per_layer = w * v if per_layer is None else per_layer + w * v
            else:
                scalar.append(w * v)
            if f"{name}_enc" in enc_values:
                scalar.append(w * enc_values[f"{name}_enc"])
        total = jnp.zeros((), jnp.float32) if per_layer is None else jnp.sum(per_layer)
        for v in scalar:
            total = total + v
        metrics: dict[str, jax.Array] = {"loss": total}
        for name, v in values.items():
            if v.ndim == 1:
                metrics[name] = v[-1]
                metrics.update({f"{name}_{i}": v[i] for i in range(v.shape[0] - 1)})
            else:
                metrics[name] = v
        metrics.update(enc_values)
        if t is not None:
            metrics["num_boxes"] = t.num_boxes
        return total.astype(jnp.float32), {k: jnp.asarray(v, jnp.float32)
                                           for k, v in metrics.items()}
