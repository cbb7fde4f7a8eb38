"""Variate labels: one learned token per variate, prepended to its sequence before the first layer.

Upstream's fine-tuning with exogenous features (``enable_variate_labels``) adds two
label vectors, one for target variates and one for exogenous ones. Each row's label,
scaled to unit length, becomes a token at time position 0 that the patches (from
position 1 on) attend to. It is prepended once, when a sequence starts, and then lives
in the KV cache like any patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


class Fusion(nn.Module):
    """Prepends unit-length label embeddings along the sequence axis (no parameters of its own)."""

    def forward(
        self,
        embeddings: Float[Tensor, "batch variate seq embed"],
        variate_label_embeds: Float[Tensor, "batch variate 1 embed"] | None = None,
    ) -> Float[Tensor, "batch variate new_seq embed"]:
        if variate_label_embeds is None:
            return embeddings
        labels = F.normalize(variate_label_embeds, dim=-1).to(embeddings.dtype)
        return torch.cat((labels.expand(*embeddings.shape[:2], 1, -1), embeddings), dim=2)
