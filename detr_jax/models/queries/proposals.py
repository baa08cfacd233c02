"""Two-stage Deformable DETR's queries: none of their own; the encoder's top proposals.

The transformer (two_stage=True) turns its `num_queries` best per-pixel proposals into the
decoder's queries and reference boxes (detr_jax/models/transformers/two_stage.py); this
generator only says how many. No params.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn


class EncoderProposalQueries(nn.Module):
    """`num_queries` queries taken from the encoder's proposals (two-stage).

    Attributes:
      num_queries: Q, the proposals kept (the original's `two_stage_num_proposals`, 300).
    """

    num_queries: int = 300

    def __call__(
        self, batch_size: int, train: bool = False, targets: dict | None = None
    ) -> dict[str, Any]:
        """The query set of docs/interfaces.md without embeddings: `query_pos` and `tgt` None,
        `num_queries` Q (the transformer fills them in), `self_attn_mask` None, one group."""
        del batch_size, train, targets
        return {"query_pos": None, "tgt": None, "self_attn_mask": None, "num_groups": 1,
                "num_queries": self.num_queries}
