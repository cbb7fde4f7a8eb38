"""Toto 2.0's attention: grouped key/value heads, optional QK norm and per-dimension query
scale, rotary (optionally xPos) on the first half of each time-attention head, 1/d scaling."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .config import Toto2Config
from .layers import PerDimScale, RMSNorm, UnitLinear

ROTARY_BASE = 10000
XPOS_SCALE_BASE = 256


class Rotation(NamedTuple):
    """Rotary factors of one call's positions, shared by every time layer."""

    cos: Float[Tensor, "seq width"]
    sin: Float[Tensor, "seq width"]
    query_scale: Float[Tensor, "seq width"] | None  # xPos
    key_scale: Float[Tensor, "seq width"] | None


class LayerCache(NamedTuple):
    """One time layer's static key/value buffers and the slots this call writes."""

    keys: Float[Tensor, "rows kv_heads capacity dim"]
    values: Float[Tensor, "rows kv_heads capacity dim"]
    slots: Int[Tensor, " seq"]


def rotation(positions: Int[Tensor, " seq"], center: Tensor | int, width: int, xpos: bool) -> Rotation:
    """Interleaved-pair rotary factors for ``width`` dimensions at ``positions``.

    xPos scales queries by b ** ((p - center) / 256) and keys by its inverse, per pair
    (b from 5/14 to 1 across the pairs); upstream centres on (max position + 1) // 2 of the call.
    """
    theta = 1.0 / torch.pow(ROTARY_BASE, torch.arange(0, width, 2, dtype=torch.float, device=positions.device) / width)
    angles = repeat(positions.float()[:, None] * theta, "seq half -> seq (half two)", two=2)
    if not xpos:
        return Rotation(angles.cos(), angles.sin(), None, None)
    base = (torch.arange(0, width, 2, device=positions.device).float() + 0.4 * width) / (1.4 * width)
    power = (positions.float() - center) / XPOS_SCALE_BASE
    scale = repeat(base ** power[:, None], "seq half -> seq (half two)", two=2)
    return Rotation(angles.cos(), angles.sin(), scale, scale**-1.0)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return cos * x + sin * turned


def apply_rotation(q: Tensor, k: Tensor, turn: Rotation) -> tuple[Tensor, Tensor]:
    """Rotate the first half of each head's dimensions of ``q`` and ``k`` ([rows, heads, seq, dim])."""
    width = turn.cos.shape[-1]
    q_turned = _rotate(q[..., :width], turn.cos.to(q.dtype), turn.sin.to(q.dtype))
    k_turned = _rotate(k[..., :width], turn.cos.to(k.dtype), turn.sin.to(k.dtype))
    if turn.query_scale is not None:
        q_turned = q_turned * turn.query_scale.to(q.dtype)
        k_turned = k_turned * turn.key_scale.to(k.dtype)
    return torch.cat((q_turned, q[..., width:]), -1), torch.cat((k_turned, k[..., width:]), -1)


class Attention(nn.Module):
    def __init__(self, config: Toto2Config, over_time: bool):
        super().__init__()
        self.over_time = over_time
        self.heads, self.kv_heads = config.num_heads, config.num_groups
        self.qk_dim, self.v_dim = config.qk_dim, config.v_dim
        if config.qk_norm:
            self.q_norm = RMSNorm(config.qk_dim, config.norm_eps, config.qk_norm_include_weight)
            self.k_norm = RMSNorm(config.qk_dim, config.norm_eps, config.qk_norm_include_weight)
        else:
            self.q_norm = self.k_norm = None
        widths = (config.qk_dim * config.num_heads, config.qk_dim * config.num_groups, config.v_dim * config.num_groups)
        self.split = widths
        self.in_proj = UnitLinear(config.d_model, sum(widths), bias=config.attn_bias)
        self.out_proj = UnitLinear(config.v_dim * config.num_heads, config.d_model, bias=config.attn_bias)
        self._pds = PerDimScale(config.qk_dim) if config.per_dim_scale else None

    def forward(
        self,
        x: Float[Tensor, "rows seq dim"],
        mask: Bool[Tensor, "rows 1 seq keys"] | None = None,
        turn: Rotation | None = None,
        cache: LayerCache | None = None,
        tail: int | None = None,
    ) -> Float[Tensor, "rows tail dim"]:
        """Without ``mask``: causal over time, full across variates. With ``cache``, the new keys
        are written at ``cache.slots`` and the queries attend over the whole buffer (``mask``).
        ``tail``: only the last ``tail`` tokens query (all give keys); ``mask`` is theirs."""
        q, k, v = self.in_proj(x).split(self.split, dim=-1)
        q = rearrange(q, "rows seq (heads dim) -> rows heads seq dim", heads=self.heads)
        k = rearrange(k, "rows seq (heads dim) -> rows heads seq dim", heads=self.kv_heads)
        v = rearrange(v, "rows seq (heads dim) -> rows heads seq dim", heads=self.kv_heads)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self._pds is not None:
            q = self._pds(q)
        if turn is not None:
            q, k = apply_rotation(q, k, turn)
        if tail is not None:
            q = q[..., -tail:, :]
        if cache is not None:
            cache.keys.index_copy_(2, cache.slots, k)
            cache.values.index_copy_(2, cache.slots, v)
            k, v = cache.keys, cache.values
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None and self.over_time, scale=1.0 / self.qk_dim,
            enable_gqa=self.heads != self.kv_heads,
        )  # fmt: skip
        return self.out_proj(rearrange(y, "rows heads seq dim -> rows seq (heads dim)"))
