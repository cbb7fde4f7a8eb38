"""Upstream-compatible import path for the KV cache and RMSNorm."""

from .kv_cache import KVCache
from .layers import RMSNorm

__all__ = ["KVCache", "RMSNorm"]
