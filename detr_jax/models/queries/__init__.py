"""Query generators by name: `QUERY_GENERATORS[config.model.queries.name]`.

A generator returns the decoder's queries, its self-attention mask and what the loss needs to
know about them (docs/interfaces.md). Denoising and anchor queries register here too.
"""

from __future__ import annotations

from detr_jax.models.queries.anchors import AnchorQueries
from detr_jax.models.queries.dino import DinoQueries
from detr_jax.models.queries.learned import LearnedQueries
from detr_jax.models.queries.proposals import EncoderProposalQueries
from detr_jax.models.registry import Registry

QUERY_GENERATORS = Registry("query generator")
QUERY_GENERATORS.register("learned", LearnedQueries)
QUERY_GENERATORS.register("encoder_proposals", EncoderProposalQueries)
QUERY_GENERATORS.register("dino", DinoQueries)
QUERY_GENERATORS.register("anchors", AnchorQueries)

__all__ = ["QUERY_GENERATORS", "AnchorQueries", "DinoQueries", "EncoderProposalQueries",
           "LearnedQueries"]
