"""Capacity buckets: how many patches the KV caches of a call hold, shared by the
forecaster (buffers, compiled graphs) and the memory guard. Imports nothing from the package."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")

# KV-cache capacity is rounded up to a multiple of this many patches, so contexts of
# varying length share buffers and compiled graphs: one graph per bucket.
CAPACITY_BUCKET = 16
# Decode-buffer sets kept for reuse, least recently used dropped first: bounds memory in
# long backtests that touch many shapes. A call uses two sets (context rows, sample rows);
# 16 covers the 8 shapes per step that dynamo's default recompile_limit lets compile.
MAX_BUFFER_SETS = 16


def bucket_capacity(num_patches: int) -> int:
    return -(-num_patches // CAPACITY_BUCKET) * CAPACITY_BUCKET


def decode_capacity(num_patches: int) -> int:
    """Cache slots of sample rows, which hold only decoded patches: the next power of two.

    Every step attends over all of them, so a tight bound matters more here than in the
    context's cache; powers of two keep the number of step graphs logarithmic in the horizon.
    """
    return 1 << max(0, num_patches - 1).bit_length()


def pooled(pool: OrderedDict[Hashable, T], key: Hashable, allocate: Callable[[], T]) -> T:
    """``pool[key]``, allocated on first use; past ``MAX_BUFFER_SETS`` the least recently used goes."""
    if key in pool:
        pool.move_to_end(key)
    else:
        if len(pool) >= MAX_BUFFER_SETS:
            pool.popitem(last=False)
        pool[key] = allocate()
    return pool[key]
