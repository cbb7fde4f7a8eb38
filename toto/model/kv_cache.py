"""Static key/value cache for the time-wise attention layers.

One buffer pair per time-wise layer, ``[rows, heads, capacity, head_dim]``, allocated once and
written in place at position *tensors*; attention spans the full capacity under a validity mask.
The count of patches written (``length``) is a host int, never read from the device.
Sample paths decode in a :class:`PrefixedCache`: each row caches only its decoded patches and
reads the context from one shared prefix cache (one row per series).
"""

from __future__ import annotations

from typing import NamedTuple

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
        shape = (rows, num_heads, capacity, head_dim)
        layers = max(1, num_time_layers)
        self.keys: list[Float[Tensor, "rows heads capacity head_dim"]] = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)
        ]
        self.values: list[Float[Tensor, "rows heads capacity head_dim"]] = [torch.zeros_like(k) for k in self.keys]
        self.length = 0  # host-side count of patches written; never read from the device

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

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
        return torch.arange(start, start + num_patches, device=self.keys[0].device)

    def write(self, slot: int, positions: Int[Tensor, " n"], keys: Tensor, values: Tensor) -> None:
        """Store ``keys``/``values`` ``[rows, heads, n, head_dim]`` of time layer ``slot`` at ``positions``."""
        self.keys[slot][:, :, positions] = keys.to(self.keys[slot].dtype)
        self.values[slot][:, :, positions] = values.to(self.values[slot].dtype)

    def tensors(self) -> list[Tensor]:
        return [*self.keys, *self.values]

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


class PrefixedCache(NamedTuple):
    """A decode cache whose rows share a prefix: rows are laid out (block, prefix row).

    ``own`` holds each row's decoded patches from slot 0; ``prefix`` holds the context,
    one row per series, written once by prefill and only read here. Time positions stay
    global (the rotary tables take them); own slot ``i`` is position ``prefix_length + i``.
    """

    own: KVCache
    prefix: KVCache
    prefix_length: Int[Tensor, ""]  # valid prefix slots; the rest are padding or stale
