"""Multi-head attention over time (causal, rotary, cached) and over variates (block mask)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from .kv_cache import KVCache, PrefixedCache
from .rotary import RotaryTables, apply_rotary


class _Attention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = dropout  # on the attention weights, in training mode only (as upstream)
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.wQKV = nn.Linear(embed_dim, 3 * embed_dim)
        self.wO = nn.Linear(embed_dim, embed_dim)

    def _qkv(self, x: Float[Tensor, "rows seq embed"]) -> tuple[Tensor, Tensor, Tensor]:
        # The checkpoint orders the fused projection as (qkv, head_dim, heads):
        # heads vary fastest, unlike the output projection's (heads, head_dim).
        # "rows seq (qkv dim heads) -> qkv rows heads seq dim" in einops' notation. No einops in this
        # module: it runs per layer per decode step, where einops' call overhead showed in eager decoding.
        qkv = self.wQKV(x).unflatten(-1, (3, self.head_dim, self.num_heads)).permute(2, 0, 4, 1, 3)
        # Contiguous head_dim: with a strided one, SDPA on CPU falls back to its math kernel (about 5x slower).
        q, k, v = (t.contiguous() for t in qkv.unbind(0))
        return q, k, v

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def _out(self, y: Float[Tensor, "rows heads seq head_dim"]) -> Float[Tensor, "rows seq embed"]:
        return self.wO(y.transpose(1, 2).flatten(-2))  # rows heads seq dim -> rows seq (heads dim)


class TimeAttention(_Attention):
    """Causal attention along time, one row per (batch, variate)."""

    def forward(
        self,
        x: Float[Tensor, "batch variate seq embed"],
        rotation: RotaryTables,
        positions: Int[Tensor, " seq"],
        cache: KVCache | PrefixedCache | None = None,
        slot: int = 0,
        padding: LeadingPadding | None = None,
    ) -> Float[Tensor, "batch variate seq embed"]:
        """``rotation``: the rotary tables at ``positions`` (``XPosRotaryEmbedding.tables``).

        ``padding``: leading patches of each row to hide from every key (see :class:`LeadingPadding`).
        """
        batch, variates, seq, _ = x.shape
        q, k, v = self._qkv(x.flatten(0, 1))  # one row per (batch, variate)
        q, k = apply_rotary(q, k, rotation)
        if isinstance(cache, PrefixedCache):
            if seq != 1:
                raise ValueError(f"a PrefixedCache decodes one patch at a time, got {seq}")
            y = attend_after_prefix(q, k, v, positions, cache, slot, padding)
            return self._out(y).unflatten(0, (batch, variates))
        if cache is None or seq > 1:
            # Prefill: a cache, if any, is empty here, so causal attention over
            # the new tokens alone is exactly attention over the cache.
            if padding is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._dropout_p())
            else:
                causal = positions[None, :] <= positions[:, None]
                # A padded query still sees itself: a row with no visible key would be NaN.
                mask = causal & (padding.visible(positions, variates) | torch.eye(seq, dtype=torch.bool, device=x.device))
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self._dropout_p())
        if cache is not None:
            cache.write(slot, positions, k, v)
            if seq == 1:
                keys, values = cache.layer(slot)
                slots = torch.arange(cache.capacity, device=x.device)
                valid = slots <= positions[:, None]
                if padding is not None:
                    valid = valid & padding.visible(slots, variates)
                y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=valid)
        return self._out(y).unflatten(0, (batch, variates))


class LeadingPadding(NamedTuple):
    """Tokens ``[labels, first_real)`` of each row are padding that time attention hides.

    A series left-padded by whole patches to share a batch with longer ones then
    attends as it would alone (upstream attends to such padding). Label tokens, before
    ``labels``, stay visible.
    """

    first_real: Int[Tensor, " batch"]  # token position of each series' first real patch
    labels: int = 0
    # Moves each series' xPos centre back by this many tokens (None: 0). A live stream's cached
    # keys keep the centre of the context they were written for; its decode steps shift by how
    # far the centre of the grown context has moved since (toto.inference.streaming).
    xpos_shift: Int[Tensor, " batch"] | None = None

    def visible(self, keys: Int[Tensor, " n"], variates: int) -> Bool[Tensor, "rows 1 1 n"]:
        """Which key positions each (series, variate) row may attend to."""
        first = self.first_real.repeat_interleave(variates)[:, None, None, None]
        return (keys < self.labels) | (keys >= first)

    def rotary_positions(
        self, positions: Int[Tensor, " seq"], last: Int[Tensor, ""] | None, batch: int, variates: int
    ) -> tuple[Int[Tensor, "rows seq"], Int[Tensor, " rows"]]:
        """Per-row rotary positions (and last real position) as the row would have alone.

        Rotary attention here is not purely relative (the xPos scale is laid out apart
        from the rotation pairs), so a shifted series would attend slightly differently;
        moving its real tokens back by its padding gives it its own positions. ``batch``
        rows may be several blocks of the series (sample rows, laid out (block, series)).
        """
        blocks = batch // self.first_real.shape[0]
        per_series = (self.first_real - self.labels).repeat_interleave(variates)
        shift = per_series.repeat(blocks)[:, None]
        moved = torch.where(positions < self.labels, positions, positions - shift)
        end = (positions.max() if last is None else last) - shift[:, 0]
        if self.xpos_shift is not None:  # the centre is end // 2: two steps of end per token
            end = end - (2 * self.xpos_shift).repeat_interleave(variates).repeat(blocks)
        return moved, end


def attend_after_prefix(
    q: Float[Tensor, "rows heads 1 head_dim"],
    k: Float[Tensor, "rows heads 1 head_dim"],
    v: Float[Tensor, "rows heads 1 head_dim"],
    positions: Int[Tensor, " 1"],
    cache: PrefixedCache,
    slot: int,
    padding: LeadingPadding | None = None,
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
    head_dim = q.shape[-1]
    series = prefix_keys.shape[0]

    def by_series(t: Tensor) -> Tensor:  # (block series) heads n -> series heads block n
        return t.unflatten(0, (-1, series)).permute(1, 2, 0, 3)

    def by_row(t: Tensor) -> Tensor:  # series heads block n -> (block series) heads 1 n
        return t.permute(2, 0, 1, 3).flatten(0, 1)[:, :, None]

    q_by_series = by_series(q.squeeze(2))
    prefix_scores = q_by_series @ prefix_keys.to(q.dtype).transpose(-1, -2)
    own_scores = by_series((q @ own_keys.to(q.dtype).transpose(-1, -2)).squeeze(2))
    prefix_slots = torch.arange(prefix_keys.shape[2], device=q.device)
    prefix_valid = prefix_slots < cache.prefix_length
    own_valid = torch.arange(own_keys.shape[2], device=q.device) <= own_positions
    scores = torch.cat((prefix_scores, own_scores), dim=-1).float() * head_dim**-0.5
    valid = torch.cat((prefix_valid, own_valid))
    if padding is not None:  # only the context has padding; it is the prefix, one row per series
        hidden = ~padding.visible(prefix_slots, series // padding.first_real.shape[0])  # [series, 1, 1, prefix]
        valid = valid & ~F.pad(hidden, (0, own_keys.shape[2]))
    scores = scores.masked_fill(~valid, float("-inf"))
    weights = scores.softmax(dim=-1).to(q.dtype)
    prefix_weights, own_weights = weights.split((prefix_keys.shape[2], own_keys.shape[2]), dim=-1)
    return by_row(prefix_weights @ prefix_values.to(q.dtype)) + by_row(own_weights) @ own_values.to(q.dtype)


class SpaceAttention(_Attention):
    """Bidirectional attention across variates at each patch, restricted to variates of the same id."""

    def forward(
        self,
        x: Float[Tensor, "batch variate seq embed"],
        same_id: Bool[Tensor, "batch_x_seq 1 variate variate"],
    ) -> Float[Tensor, "batch variate seq embed"]:
        batch = x.shape[0]
        q, k, v = self._qkv(x.transpose(1, 2).flatten(0, 1))  # one row per (batch, seq)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=same_id, dropout_p=self._dropout_p())
        return self._out(y).unflatten(0, (batch, -1)).transpose(1, 2)


def same_id_mask(id_patches: Int[Tensor, "batch variate seq"]) -> Bool[Tensor, "batch_x_seq 1 variate variate"]:
    """Block mask: variate i may attend to variate j at a patch iff their ids match there."""
    ids = id_patches.transpose(1, 2).flatten(0, 1)  # [(batch seq), variate]
    return (ids[:, :, None] == ids[:, None, :]).unsqueeze(1)
