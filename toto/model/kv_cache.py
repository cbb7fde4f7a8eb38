"""Static key/value cache for the time-wise attention layers.

Buffers are allocated once, shaped ``[time_layers, rows, heads, capacity,
head_dim]``, and written in place at position *tensors* with ``index_copy_``;
attention always spans the full capacity under a validity mask. The number of
patches written so far lives on the host as a plain int (``length``) and is
never read back from the device, so nothing here forces a sync or makes the
compiler specialise on a changing length.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


class KVCache:
    def __init__(
        self,
        num_time_layers: int,
        rows: int,
        num_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        shape = (max(1, num_time_layers), rows, num_heads, capacity, head_dim)
        self.keys: Float[Tensor, "layers rows heads capacity head_dim"] = torch.zeros(shape, device=device, dtype=dtype)
        self.values: Float[Tensor, "layers rows heads capacity head_dim"] = torch.zeros_like(self.keys)
        self.length = 0  # host-side count of patches written; never read from the device

    @classmethod
    def wrap(cls, keys: Tensor, values: Tensor, length: int = 0) -> "KVCache":
        """A cache over existing buffers (e.g. a view of another cache's first rows)."""
        cache = cls.__new__(cls)
        cache.keys, cache.values, cache.length = keys, values, length
        return cache

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def rows(self) -> int:
        return self.keys.shape[1]

    @torch.compiler.disable
    def advance(self, num_patches: int) -> int:
        """Host bookkeeping: claim ``num_patches`` slots and return the first one's index.

        Kept out of compiled graphs so the growing length is never baked into one.
        """
        start = self.length
        if start + num_patches > self.capacity:
            raise ValueError(
                f"KV cache is full: {start} + {num_patches} patches exceed its capacity of {self.capacity}"
            )
        self.length = start + num_patches
        return start

    @torch.compiler.disable
    def reserve(self, num_patches: int) -> Int[Tensor, " num_patches"]:
        """Claim the next ``num_patches`` slots; return their positions as a device tensor."""
        start = self.advance(num_patches)
        return torch.arange(start, start + num_patches, device=self.keys.device)

    def write(self, slot: int, positions: Int[Tensor, " n"], keys: Tensor, values: Tensor) -> None:
        """Store ``keys``/``values`` ``[rows, heads, n, head_dim]`` of time layer ``slot`` at ``positions``."""
        self.keys[slot].index_copy_(2, positions, keys.to(self.keys.dtype))
        self.values[slot].index_copy_(2, positions, values.to(self.values.dtype))

    def layer(self, slot: int) -> tuple[Tensor, Tensor]:
        return self.keys[slot], self.values[slot]

    def reset(self) -> None:
        # Stale entries are masked out by position, so zeroing is unnecessary.
        self.length = 0

    # Upstream-compatible accessors (patches written so far).
    def current_len(self, cache_idx: int = 0) -> int:
        return self.length

    def seq_len(self, layer_idx: int = 0) -> int:
        return self.length
