"""Decode state of a live stream: a prefilled context that grows by one observed patch per step.

A stream's forecast must equal a fresh call on its whole context. Three things make a
cached step differ from re-encoding, and each is handled here:

- **xPos centring.** Toto's xPos scale is centred per call on the middle of the call's
  positions, and cached keys keep the centre they were written with. Query and key scales
  multiply, so within one call only the difference of positions matters and the centre
  cancels (up to rounding). A stream therefore writes every context key with the centre of
  its first prefill (``xpos_centre``), and its decode steps move the centre by how far a
  fresh call's would have moved since (``ContextBuffers.xpos_shift``), as upstream's decode
  steps, with their own per-step centring, read a freshly prefilled cache.
- **The scaler's global clamp.** Its bounds come from the statistics of the whole context,
  so they move as the context grows. An earlier patch's scale changes only if it is clamped
  under the old or the new bounds; the step keeps the range of earlier patches' unclamped
  scales and reports in ``exact`` whether it stays inside both (else the host re-encodes).
- **Missing values** are filled with the last observed value before them, across appends.

Functions are tensor functions of fixed shapes (compiled like the decode steps).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..model.backbone import TotoBackbone
from .decoding import ContextBuffers, NextPatch, mark_static, next_patch, prefill


class StreamBuffers(NamedTuple):
    context: ContextBuffers  # the cache holds the context's patches only; forecasts never write it
    xpos_centre: Int[Tensor, " batch"]  # each series' own xPos centre (tokens) of its cached keys
    raw_scales: Float[Tensor, "2 batch variate"]  # min and max unclamped scale of the cached patches (float64)
    last_value: Float[Tensor, "batch variate"]  # what a missing value at the start of the next patch becomes
    exact: Bool[Tensor, "batch variate"]  # after a step: whether the cached patches are still exact

    @classmethod
    def allocate(
        cls, model: TotoBackbone, rows: int, variates: int, capacity: int, data_dtype: torch.dtype, device
    ) -> "StreamBuffers":
        context = ContextBuffers.allocate(model, rows, variates, capacity, data_dtype, device)
        buffers = cls(
            context,
            torch.zeros(rows, dtype=torch.long, device=device),
            torch.zeros(2, rows, variates, dtype=torch.float64, device=device),
            torch.zeros(rows, variates, dtype=data_dtype, device=device),
            torch.ones(rows, variates, dtype=torch.bool, device=device),
        )
        mark_static(buffers[1:])
        return buffers

    def tensors(self) -> list[Tensor]:
        return [*self.context.tensors(), *self[1:]]


def stream_prefill(
    model: TotoBackbone,
    stream: StreamBuffers,
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"],
    id_patches: Int[Tensor, "batch variate patches"],
    last: Int[Tensor, ""],
    first_real: Int[Tensor, " batch"],
) -> None:
    """:func:`~toto.inference.decoding.prefill` (``series`` filled, staged and right-padded as
    there), plus what later steps need: the centre the keys were written with, the range of
    the patches' unclamped scales and the fill value of the next patch."""
    context = stream.context
    prefill(model, context, series, observed, id_patches, last, None, first_real)
    patch = model.patch_size
    stream.xpos_centre.copy_((last + model.num_prepended_tokens - first_real) // 2)
    context.xpos_shift.zero_()
    raw = model.scaler.raw_patch_scales(series, observed)
    real = torch.arange(raw.shape[-1], device=raw.device) <= last  # right padding is not context
    stream.raw_scales[0].copy_(torch.where(real, raw, torch.inf).amin(-1))
    stream.raw_scales[1].copy_(torch.where(real, raw, -torch.inf).amax(-1))
    stream.last_value.copy_(series.index_select(-1, ((last + 1) * patch - 1).reshape(1)).squeeze(-1))
    stream.exact.fill_(True)


def append_step(
    model: TotoBackbone,
    stream: StreamBuffers,
    values: Float[Tensor, "batch variate patch"],
    observed: Bool[Tensor, "batch variate patch"],
) -> None:
    """Append one observed patch (``values`` arbitrary where not ``observed``) at the context's
    end: cache its keys, move the scaler sums and clamp bounds, and replace the head with the
    distribution of the patch after it. ``stream.exact`` says whether the earlier patches'
    scales survive the new clamp bounds (if not, re-encode the context)."""
    context = stream.context
    state = context.state
    filled = _filled(values, observed, stream.last_value)
    old_low, old_high = state.scaler.min_scale, state.scaler.max_scale
    scaled, loc, scale, stats, raw = model.scaler.append(state.scaler, filled, observed)
    low, high = torch.maximum(old_low, stats.min_scale), torch.minimum(old_high, stats.max_scale)
    stream.exact.copy_((stream.raw_scales[0] >= low) & (stream.raw_scales[1] <= high))
    labels = model.num_prepended_tokens
    # Centre this token's query and key where the cached keys' centre is (module docstring).
    own_end = state.position + labels - context.first_real
    shift = own_end // 2 - stream.xpos_centre
    hidden = model.encode(
        scaled, state.last_ids[..., None], state.position[None], state.cache, first_real=context.first_real,
        xpos_shift=shift,
    )  # fmt: skip
    mixture = model.fast_head(hidden)
    head = NextPatch(mixture.df, mixture.loc, mixture.scale, mixture.logits, loc[..., None], scale[..., None])
    for dst, src in zip(context.head, head):
        dst.copy_(src)
    for dst, src in zip(state.scaler, stats):
        dst.copy_(src)
    stream.raw_scales[0].copy_(torch.minimum(stream.raw_scales[0], raw))
    stream.raw_scales[1].copy_(torch.maximum(stream.raw_scales[1], raw))
    stream.last_value.copy_(filled[..., -1])
    state.position.add_(1)
    state.patch.copy_(next_patch(head.distribution(), sample=False))
    # A fresh call on the grown context centres its keys on own_end // 2: decode steps move there.
    context.xpos_shift.copy_(shift)


def _filled(values: Tensor, observed: Tensor, before: Tensor) -> Tensor:
    """Missing steps take the last observed value before them (``before``: the one before the patch)."""
    steps = torch.arange(values.shape[-1], device=values.device).expand_as(values)
    last_seen = torch.where(observed, steps, -1).cummax(-1).values
    carried = values.gather(-1, last_seen.clamp_min(0))
    return torch.where(observed, values, torch.where(last_seen >= 0, carried, before[..., None]))
