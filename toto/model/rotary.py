"""Rotary position embedding with xPos scaling, laid out exactly as Toto was trained.

Two details decide parity with the published weights:

* angles are interleaved pairwise (f0, f0, f1, f1, ...) and rotated with the
  matching pairwise ``rotate_half``;
* the xPos scale is centred *per call* on ``max(t) // 2`` and laid out
  half-split, ``[s**power, s**power]``, which does not match the interleaved
  angles. That mismatch is what the model learned with, so we keep it.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor, nn


class XPosRotaryEmbedding(nn.Module):
    """Stateless: tables are recomputed per forward (32 frequencies), so there is no buffer to load."""

    def __init__(self, head_dim: int, theta: float = 10000.0, scale_base: float = 512.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.scale_base = scale_base

    def tables(
        self, positions: Int[Tensor, " seq"], dtype: torch.dtype, last: Int[Tensor, ""] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(cos, sin, xPos scale) at ``positions``, each ``[seq, head_dim]``; shared by every layer of a call.

        The xPos power is centred on ``last // 2``, ``last`` being the call's last real
        position (default: the largest of ``positions``). A prefill right-padded to a
        static length passes it, so the keys it caches carry the centring an unpadded
        call would have given them.
        """
        half = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=torch.float32)
        inv_freq = 1.0 / self.theta ** (half / self.head_dim)
        t = positions.to(torch.float32)
        angles = (t[:, None] * inv_freq).repeat_interleave(2, dim=-1)
        xpos_base = (half + 0.4 * self.head_dim) / (1.4 * self.head_dim)
        end = t.max() if last is None else last.to(torch.float32)
        power = (t - torch.floor(end / 2)) / self.scale_base
        scale = xpos_base ** power[:, None]
        scale = torch.cat((scale, scale), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype), scale.to(dtype)


def apply_rotary(q: Tensor, k: Tensor, tables: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Rotate q and k with precomputed :meth:`XPosRotaryEmbedding.tables`."""
    cos, sin, scale = tables
    return (q * cos + _rotate_pairs(q) * sin) * scale, (k * cos + _rotate_pairs(k) * sin) / scale


def _rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
