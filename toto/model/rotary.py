"""Rotary position embedding with xPos scaling, laid out exactly as Toto was trained.

Parity with the published weights needs two details: the angles are interleaved pairwise
(f0, f0, f1, f1, ...) and rotated with the matching pairwise ``rotate_half``; the xPos scale
is centred *per call* on ``max(t) // 2`` and laid out half-split (s0, s1, ..., s0, s1, ...),
which does not match the angles. The model learned with that mismatch, so it stays.
"""

from __future__ import annotations

from typing import NamedTuple

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
        self,
        positions: Int[Tensor, "*rows seq"],
        dtype: torch.dtype,
        last: Int[Tensor, "*rows"] | None = None,
    ) -> RotaryTables:
        """The rotation at ``positions`` with the xPos scale folded in, for q and for k; shared by every layer of a call.

        The xPos power is centred on ``last // 2``, ``last`` being the call's last real
        position (default: the largest of ``positions``). A prefill right-padded to a
        static length passes it, so the keys it caches carry the centring an unpadded
        call would have given them. ``positions`` ``[rows, seq]`` (with ``last`` ``[rows]``)
        gives each row its own positions: tables ``[rows, 1, seq, head_dim]``, one per row
        for every head.
        """
        half = torch.arange(0, self.head_dim, 2, device=positions.device, dtype=torch.float32)
        inv_freq = 1.0 / self.theta ** (half / self.head_dim)
        t = positions.to(torch.float32)
        angles = (t[..., None] * inv_freq).repeat_interleave(2, dim=-1)  # "... (freq pair)": f0, f0, f1, f1, ...
        xpos_base = (half + 0.4 * self.head_dim) / (1.4 * self.head_dim)
        end = t.amax(-1) if last is None else last.to(torch.float32)
        power = (t - torch.floor(end / 2)[..., None]) / self.scale_base
        scale = xpos_base ** power[..., None]
        scale = torch.cat((scale, scale), dim=-1)  # "... (half freq)": s0, s1, ..., s0, s1, ...
        cos, sin = angles.cos(), angles.sin()
        tables = torch.stack((cos * scale, sin * scale, cos / scale, sin / scale)).to(dtype)
        if positions.ndim == 2:
            tables = tables.unsqueeze(2)  # a heads dimension to broadcast over
        if torch.compiler.is_compiling():
            tables = computed_once(tables)
        return RotaryTables(*tables.unbind(0))


@torch.library.custom_op("toto::computed_once", mutates_args=())
def computed_once(x: Tensor) -> Tensor:
    """A copy the compiler cannot see through, so that ``x`` is computed once, into memory.

    Inductor inlines cheap-looking elementwise producers into each consumer. For the
    rotary tables, read by q and k of every layer, that meant recomputing pow, cos and
    sin for every element of every row on CPU: a tenth of an S2 decode step.
    """
    return x.clone()


@computed_once.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


class RotaryTables(NamedTuple):
    """``[seq, head_dim]`` tables: q rotates by ``q_cos``/``q_sin`` (scaled by xPos), k by ``k_cos``/``k_sin`` (divided)."""

    q_cos: Tensor
    q_sin: Tensor
    k_cos: Tensor
    k_sin: Tensor


def apply_rotary(q: Tensor, k: Tensor, tables: RotaryTables) -> tuple[Tensor, Tensor]:
    """Rotate q and k with precomputed :meth:`XPosRotaryEmbedding.tables`."""
    return q * tables.q_cos + _rotate_pairs(q) * tables.q_sin, k * tables.k_cos + _rotate_pairs(k) * tables.k_sin


def _rotate_pairs(x: Tensor) -> Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
