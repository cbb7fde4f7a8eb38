"""Decode state: prefill a context once, expand it to samples, then append one patch per step.

``prefill`` and ``decode_step`` are tensor functions of (model, state, inputs);
the state's KV cache is a static buffer written in place at a position held
as a device tensor. Host bookkeeping (how many patches the cache holds) is
done by the caller through ``KVCache.advance``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..model.backbone import TotoBackbone
from ..model.distribution import AffineTransformed
from ..model.kv_cache import KVCache
from ..model.scaler import ScalerState


class DecodeState(NamedTuple):
    cache: KVCache
    scaler: ScalerState
    last_ids: Int[Tensor, "rows variate"]  # id of the newest patch; decoded patches inherit it
    position: Int[Tensor, ""]  # cache slot the next patch is written to


def prefill(
    model: TotoBackbone,
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"],
    id_mask: Int[Tensor, "batch variate time"],
    capacity: int,
) -> tuple[AffineTransformed, DecodeState]:
    """Encode a padded context; return the next patch's distribution and the decode state.

    ``capacity`` is the cache size in patches (context plus decode steps).
    """
    scaled, loc, scale, stats = model.scaler(series, observed, prefix_length=series.shape[-1])
    ids = model.id_patches(id_mask, series)
    batch, variates, num_patches = ids.shape
    cache = KVCache(
        model.transformer.num_time_layers,
        rows=batch * variates,
        num_heads=model.config.num_heads,
        head_dim=model.config.head_dim,
        capacity=capacity,
        device=series.device,
        dtype=series.dtype,
    )
    positions = cache.reserve(num_patches)
    hidden = model.encode(scaled, ids, positions, cache)
    distribution = AffineTransformed(model.head(hidden[:, :, -1:]), loc[..., -1:], scale[..., -1:])
    position = torch.tensor(num_patches, device=series.device)
    return distribution, DecodeState(cache, stats, ids[..., -1], position)


def expand_state(state: DecodeState, repeats: int) -> DecodeState:
    """Copy the state for ``repeats`` samples per series, samples outermost (rows ``sample * batch + b``)."""
    return DecodeState(
        state.cache.expand(repeats),
        state.scaler.expand(repeats),
        state.last_ids.repeat(repeats, 1),
        state.position,
    )


def decode_step(
    model: TotoBackbone,
    state: DecodeState,
    patch: Float[Tensor, "rows variate patch"],
) -> tuple[AffineTransformed, DecodeState]:
    """Append ``patch`` at ``state.position``; return the following patch's distribution and the new state."""
    scaled, loc, scale, stats = model.scaler.step(state.scaler, patch)
    hidden = model.encode(scaled, state.last_ids[..., None], state.position[None], state.cache)
    distribution = AffineTransformed(model.head(hidden), loc[..., None], scale[..., None])
    return distribution, state._replace(scaler=stats, position=state.position + 1)
