"""Pre-norm transformer layers alternating time-wise and space-wise attention."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import spacewise_layers
from .attention import LeadingPadding, SpaceAttention, TimeAttention, same_id_mask
from .fusion import Fusion
from .kv_cache import KVCache, PrefixedCache
from .layers import RMSNorm, swiglu_mlp
from .rotary import XPosRotaryEmbedding


class TransformerLayer(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, mlp_hidden_dim: int, spacewise: bool, dropout: float = 0.0):
        super().__init__()
        self.spacewise = spacewise
        self.num_heads = num_heads
        self.norm1 = RMSNorm(embed_dim)
        self.norm2 = RMSNorm(embed_dim)
        attention_cls = SpaceAttention if spacewise else TimeAttention
        self.attention = attention_cls(embed_dim, num_heads, dropout)
        self.mlp = swiglu_mlp(embed_dim, mlp_hidden_dim, dropout)


class Transformer(nn.Module):
    """The layer stack, built with upstream's constructor arguments.

    ``dropout`` acts in training mode only (fine-tuning), on attention weights and MLP
    outputs as upstream's. ``use_memory_efficient_attention`` is accepted and unused:
    attention always goes through SDPA. ``fusion`` prepends variate
    labels when a sequence starts (see :mod:`toto.model.fusion`).
    """

    def __init__(
        self,
        num_layers: int,
        embed_dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        dropout: float,
        spacewise_every_n_layers: int,
        spacewise_first: bool,
        use_memory_efficient_attention: bool = True,
        *,
        fusion: Fusion | None = None,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if spacewise_every_n_layers != -1 and num_layers % spacewise_every_n_layers:
            raise ValueError(
                f"num_layers {num_layers} is not a multiple of spacewise_every_n_layers {spacewise_every_n_layers}"
            )
        self.fusion = fusion
        self.rotary_emb = XPosRotaryEmbedding(embed_dim // num_heads)
        layer_kinds = spacewise_layers(num_layers, spacewise_every_n_layers, spacewise_first)
        self.layers = nn.ModuleList(TransformerLayer(embed_dim, num_heads, mlp_hidden_dim, s, dropout) for s in layer_kinds)
        # Cache slot of each time-wise layer (space-wise layers keep no cache).
        self.cache_slots: list[int | None] = []
        slot = 0
        for layer in self.layers:
            self.cache_slots.append(None if layer.spacewise else slot)
            slot += not layer.spacewise
        self.num_time_layers = slot

    def forward(
        self,
        inputs: Float[Tensor, "batch variate seq embed"],
        id_mask: Tensor,
        kv_cache: KVCache | None = None,
        variate_label_embeds: Float[Tensor, "batch variate 1 embed"] | None = None,
    ) -> Float[Tensor, "batch variate new_seq embed"]:
        """Upstream's call: ``id_mask`` is one id per token (``[batch, #variate, seq]``).

        With ``fusion`` and ``variate_label_embeds``, a call that starts a sequence (no
        ``kv_cache``, or an empty one) prepends the labels, and its output keeps their
        tokens. With ``kv_cache``, later calls pass one new token each.
        """
        ids = id_mask.expand(*inputs.shape[:3])
        if self.fusion is not None and variate_label_embeds is not None and (kv_cache is None or not kv_cache.length):
            inputs, ids = self.prepend_labels(inputs, ids, variate_label_embeds)
        seq = inputs.shape[2]
        if kv_cache is None:
            positions = torch.arange(seq, device=inputs.device)
        else:
            positions = _claim_tokens(kv_cache, seq)
        return self.encode_at(inputs, ids, positions, kv_cache)

    def prepend_labels(
        self, x: Float[Tensor, "batch variate seq embed"], ids: Tensor, labels: Float[Tensor, "batch variate 1 embed"]
    ) -> tuple[Float[Tensor, "batch variate seq_plus_1 embed"], Tensor]:
        """``x`` and its per-token ids with a label token first; the label takes the first token's id."""
        if self.fusion is None:
            raise ValueError("this Transformer has no fusion module; variate labels need one (enable_variate_labels)")
        return self.fusion(x, labels), torch.cat((ids[..., :1], ids), dim=-1)

    def encode_at(
        self,
        x: Float[Tensor, "batch variate seq embed"],
        id_patches: Int[Tensor, "batch variate seq"],
        positions: Int[Tensor, " seq"],
        cache: KVCache | PrefixedCache | None = None,
        last: Int[Tensor, ""] | None = None,
        padding: LeadingPadding | None = None,
    ) -> Float[Tensor, "batch variate seq embed"]:
        """Run the layers on tokens at time ``positions`` (cache slots, rotary positions).

        ``last``: the last real position when ``positions`` run past it (see ``XPosRotaryEmbedding.tables``).
        ``padding``: leading tokens time attention hides.
        """
        same_id = same_id_mask(id_patches)
        if padding is None:
            rotation = self.rotary_emb.tables(positions, x.dtype, last)  # the same for every time-wise layer
        else:
            own_positions, own_last = padding.rotary_positions(positions, last, *x.shape[:2])
            rotation = self.rotary_emb.tables(own_positions, x.dtype, own_last)
        for layer, slot in zip(self.layers, self.cache_slots):
            h = layer.norm1(x)
            if slot is None:
                h = layer.attention(h, same_id)
            else:
                h = layer.attention(h, rotation, positions, cache, slot, padding)
            x = x + h
            x = x + layer.mlp(layer.norm2(x))
        return x


@torch.compiler.disable
def _claim_tokens(cache: KVCache, count: int) -> Tensor:
    if cache.length and count != 1:
        raise ValueError(f"kv_cache holds {cache.length} tokens: after the first call, pass one new token per call, got {count}")
    return cache.reserve(count)
