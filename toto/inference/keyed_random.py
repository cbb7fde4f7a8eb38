"""Per-series random streams: draws that depend on (series key, sample, step) and on nothing else.

Seeded forecasts can draw each series' samples from its own stream, so an item's samples are
the same whichever batch, worker or machine forecasts it. Each uniform is a hash of its
coordinates (series key, sample, decoded patch, variate, step in the patch, stream): the 32-bit
PCG hash (Jarzynski and Olano, JCGT 2020) in int64 arithmetic whose products stay below 2**62,
so it is exact on every backend and compiles into the model's graph with no host sync.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..model.distribution import Uniforms

MASK = 0xFFFFFFFF
STREAMS = 3  # uniforms per drawn value: the mixture component, the radius and the angle of the Student-T draw


def pcg_hash(x: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
    """The 32-bit PCG hash of the low 32 bits of ``x`` (int64 in, int64 in ``[0, 2**32)`` out)."""
    state = ((x & MASK) * 747796405 + 2891336453) & MASK
    word = (((state >> ((state >> 28) + 4)) ^ state) * 277803737) & MASK
    return (word >> 22) ^ word


def series_key(seed: int, *parts: Any) -> int:
    """A signed 64-bit key for one series' stream, from the call's seed and what names the series.

    A digest of the parts' text, so it is the same in every process (Python's ``hash``
    of a string is salted per process) and for an id read as ``5`` or ``numpy.int64(5)``.
    """
    text = "\x1f".join(str(part) for part in (int(seed), *parts))
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def series_keys(seed: int, names: Sequence[Sequence[Any]]) -> Int[Tensor, " series"]:
    """:func:`series_key` of each series' parts, as an int64 tensor."""
    return torch.tensor([series_key(seed, *parts) for parts in names], dtype=torch.long)


def keyed_uniforms(
    keys: Int[Tensor, " series"],
    first_sample: Int[Tensor, ""],
    count: int,
    step: Int[Tensor, ""],
    variates: int,
    patch: int,
    dtype: torch.dtype = torch.float32,
) -> Uniforms:
    """Uniforms of samples ``first_sample .. first_sample + count - 1`` of every series at decoded patch ``step``.

    Shapes ``[count, series, variates, patch]``: rows laid out (sample, series), as the
    decode rows are. Nothing depends on how many series share the call or where a series
    sits among them.
    """
    device = keys.device
    samples = first_sample + torch.arange(count, device=device)
    low, high = keys & MASK, (keys >> 32) & MASK  # the arithmetic shift keeps negative keys' high word
    per_series = pcg_hash(high ^ pcg_hash(low ^ pcg_hash(step)))  # [series]
    per_row = pcg_hash(per_series[None, :] ^ pcg_hash(samples)[:, None])  # [count, series]
    counters = torch.arange(variates * patch * STREAMS, device=device).view(variates, patch, STREAMS)
    # Two rounds after mixing in the counter: one round of a 32-bit hash leaves visible
    # structure between neighbouring counters.
    words = pcg_hash(pcg_hash(per_row[..., None, None, None] ^ pcg_hash(counters)) ^ per_row[..., None, None, None])
    component, radius, angle = words.unbind(-1)
    top24 = 2.0**-24
    return Uniforms(
        component=(component >> 8).to(dtype) * top24,
        radius=(radius.to(dtype) + 0.5) * 2.0**-32,
        radius_complement=((MASK - radius).to(dtype) + 0.5) * 2.0**-32,
        angle=(angle >> 8).to(dtype) * top24,
    )
