"""Multi-head attention over time (causal, rotary, cached) and over variates (block mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .kv_cache import KVCache, PrefixedCache
from .rotary import RotaryTables, apply_rotary


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
        rotation: RotaryTables,
        positions: Int[Tensor, " seq"],
        cache: KVCache | PrefixedCache | None = None,
        slot: int = 0,
    ) -> Float[Tensor, "batch variate seq embed"]:
        """``rotation``: the rotary tables at ``positions`` (``XPosRotaryEmbedding.tables``)."""
        batch, variates, seq, _ = x.shape
        q, k, v = self._qkv(x.flatten(0, 1))
        q, k = apply_rotary(q, k, rotation)
        if isinstance(cache, PrefixedCache):
            if seq != 1:
                raise ValueError(f"a PrefixedCache decodes one patch at a time, got {seq}")
            return self._out(attend_after_prefix(q, k, v, positions, cache, slot)).unflatten(0, (batch, variates))
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


def attend_after_prefix(
    q: Float[Tensor, "rows heads 1 head_dim"],
    k: Float[Tensor, "rows heads 1 head_dim"],
    v: Float[Tensor, "rows heads 1 head_dim"],
    positions: Int[Tensor, " 1"],
    cache: PrefixedCache,
    slot: int,
) -> Float[Tensor, "rows heads 1 head_dim"]:
    """One new token per row, attending to the shared prefix and to the row's own cached tokens.

    Rows are (block, series). Against the prefix, the blocks become the query axis, so
    each (series, head) is one GEMM over a prefix read once rather than once per block.
    One softmax spans both parts, so this equals attention over the concatenated cache.
    """
    own_positions = positions - cache.prefix_length
    cache.own.write(slot, own_positions, k, v)
    own_keys, own_values = cache.own.layer(slot)
    prefix_keys, prefix_values = cache.prefix.layer(slot)
    rows, heads, _, head_dim = q.shape
    series = prefix_keys.shape[0]

    def by_series(t: Tensor) -> Tensor:  # [block*series, heads, n] -> [series, heads, block, n]
        return t.unflatten(0, (rows // series, series)).permute(1, 2, 0, 3)

    q_by_series = by_series(q.squeeze(2))
    prefix_scores = q_by_series @ prefix_keys.to(q.dtype).transpose(-1, -2)
    own_scores = by_series((q @ own_keys.to(q.dtype).transpose(-1, -2)).squeeze(2))
    prefix_valid = torch.arange(prefix_keys.shape[2], device=q.device) < cache.prefix_length
    own_valid = torch.arange(own_keys.shape[2], device=q.device) <= own_positions
    scores = torch.cat((prefix_scores, own_scores), dim=-1).float() * head_dim**-0.5
    scores = scores.masked_fill(~torch.cat((prefix_valid, own_valid)), float("-inf"))
    weights = scores.softmax(dim=-1).to(q.dtype)
    prefix_weights, own_weights = weights.split((prefix_keys.shape[2], own_keys.shape[2]), dim=-1)
    from_prefix = (prefix_weights @ prefix_values.to(q.dtype)).permute(2, 0, 1, 3).flatten(0, 1)
    from_own = own_weights.permute(2, 0, 1, 3).flatten(0, 1)[:, :, None] @ own_values.to(q.dtype)
    return from_prefix[:, :, None] + from_own


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
