"""Upstream-compatible import path for the KV cache and RMSNorm."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import kv_cache
from .layers import RMSNorm

__all__ = ["KVCache", "RMSNorm"]


class KVCache(kv_cache.KVCache):
    """Our static cache, built with upstream's constructor arguments.

    ``max_seq_len`` counts tokens (patches, plus a label token with variate labels);
    ``num_layers``, ``embed_dim`` and ``use_memory_efficient_attention`` are accepted for
    compatibility: the time-wise layers among ``transformer_layers`` decide the slots.
    """

    def __init__(
        self,
        batch_size: int,
        num_variates: int,
        transformer_layers: Sequence[nn.Module],
        num_layers: int,
        embed_dim: int,
        num_heads: int,
        max_seq_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        use_memory_efficient_attention: bool = True,
    ):
        super().__init__(
            num_time_layers=sum(not layer.spacewise for layer in transformer_layers),
            rows=batch_size * num_variates,
            num_heads=num_heads,
            head_dim=embed_dim // num_heads,
            capacity=max_seq_len,
            device=device,
            dtype=dtype,
        )
