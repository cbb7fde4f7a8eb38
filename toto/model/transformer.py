"""Pre-norm transformer layers alternating time-wise and space-wise attention."""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import TotoConfig
from .attention import SpaceAttention, TimeAttention, same_id_mask
from .kv_cache import KVCache, PrefixedCache
from .layers import RMSNorm, swiglu_mlp
from .rotary import XPosRotaryEmbedding


class TransformerLayer(nn.Module):
    def __init__(self, config: TotoConfig, spacewise: bool):
        super().__init__()
        self.spacewise = spacewise
        self.norm1 = RMSNorm(config.embed_dim)
        self.norm2 = RMSNorm(config.embed_dim)
        attention_cls = SpaceAttention if spacewise else TimeAttention
        self.attention = attention_cls(config.embed_dim, config.num_heads)
        self.mlp = swiglu_mlp(config.embed_dim, config.mlp_hidden_dim)


class Transformer(nn.Module):
    def __init__(self, config: TotoConfig):
        super().__init__()
        self.rotary_emb = XPosRotaryEmbedding(config.head_dim)
        self.layers = nn.ModuleList(TransformerLayer(config, s) for s in config.spacewise_layers)
        # Cache slot of each time-wise layer (space-wise layers keep no cache).
        self.cache_slots: list[int | None] = []
        slot = 0
        for layer in self.layers:
            self.cache_slots.append(None if layer.spacewise else slot)
            slot += not layer.spacewise
        self.num_time_layers = slot

    def forward(
        self,
        x: Float[Tensor, "batch variate seq embed"],
        id_patches: Int[Tensor, "batch variate seq"],
        positions: Int[Tensor, " seq"],
        cache: KVCache | PrefixedCache | None = None,
        last: Int[Tensor, ""] | None = None,
    ) -> Float[Tensor, "batch variate seq embed"]:
        """``last``: the last real position when ``positions`` run past it (see ``XPosRotaryEmbedding.tables``)."""
        same_id = same_id_mask(id_patches)
        rotation = self.rotary_emb.tables(positions, x.dtype, last)  # the same for every time-wise layer
        for layer, slot in zip(self.layers, self.cache_slots):
            h = layer.norm1(x)
            if slot is None:
                h = layer.attention(h, same_id)
            else:
                h = layer.attention(h, rotation, positions, cache, slot)
            x = x + h
            x = x + layer.mlp(layer.norm2(x))
        return x
