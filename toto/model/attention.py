"""Multi-head attention over time (causal, rotary, cached) and over variates (block mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .kv_cache import KVCache
from .rotary import apply_rotary


class _Attention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.wQKV = nn.Linear(embed_dim, 3 * embed_dim)
        self.wO = nn.Linear(embed_dim, embed_dim)

    def _qkv(self, x: Float[Tensor, "rows seq embed"]) -> tuple[Tensor, Tensor, Tensor]:
        # The checkpoint orders the fused projection as (qkv, head_dim, heads):
        # heads vary fastest, unlike the output projection's (heads, head_dim).
        qkv = self.wQKV(x).unflatten(-1, (3, self.head_dim, self.num_heads))
        # Contiguous head_dim: with a strided one, SDPA on CPU falls back to its math kernel (about 5x slower).
        q, k, v = (t.contiguous() for t in qkv.permute(2, 0, 4, 1, 3).unbind(0))  # each [rows, heads, seq, head_dim]
        return q, k, v

    def _out(self, y: Float[Tensor, "rows heads seq head_dim"]) -> Float[Tensor, "rows seq embed"]:
        return self.wO(y.transpose(1, 2).flatten(-2))


class TimeAttention(_Attention):
    """Causal attention along time, one row per (batch, variate)."""

    def forward(
        self,
        x: Float[Tensor, "batch variate seq embed"],
        rotation: tuple[Tensor, Tensor, Tensor],
        positions: Int[Tensor, " seq"],
        cache: KVCache | None = None,
        slot: int = 0,
    ) -> Float[Tensor, "batch variate seq embed"]:
        """``rotation``: the rotary tables at ``positions`` (``XPosRotaryEmbedding.tables``)."""
        batch, variates, seq, _ = x.shape
        q, k, v = self._qkv(x.flatten(0, 1))
        q, k = apply_rotary(q, k, rotation)
        if cache is None or seq > 1:
            # Prefill: a cache, if any, is empty here, so causal attention over
            # the new tokens alone is exactly attention over the cache.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if cache is not None:
            cache.write(slot, positions, k, v)
            if seq == 1:
                keys, values = cache.layer(slot)
                valid = torch.arange(cache.capacity, device=x.device) <= positions[:, None]
                y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=valid)
        return self._out(y).unflatten(0, (batch, variates))


class SpaceAttention(_Attention):
    """Bidirectional attention across variates at each patch, restricted to variates of the same id."""

    def forward(
        self,
        x: Float[Tensor, "batch variate seq embed"],
        same_id: Bool[Tensor, "batch_x_seq 1 variate variate"],
    ) -> Float[Tensor, "batch variate seq embed"]:
        batch, variates, seq, _ = x.shape
        q, k, v = self._qkv(x.transpose(1, 2).flatten(0, 1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=same_id)
        return self._out(y).unflatten(0, (batch, seq)).transpose(1, 2)


def same_id_mask(id_patches: Int[Tensor, "batch variate seq"]) -> Bool[Tensor, "batch_x_seq 1 variate variate"]:
    """Block mask: variate i may attend to variate j at a patch iff their ids match there."""
    ids = id_patches.transpose(1, 2).flatten(0, 1)  # [batch*seq, variate]
    return (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)
