"""Block decoding with median feedback over static buffers: one pure function per block.

A call's tokens sit in fixed slots: the context's patches first (left-padded to a bucket),
then the forecast's. The first block reads the context and the block's unknown patches;
each later block reads the previous block's medians and its own unknown patches, with the
keys of everything before in the cache. Slots, positions and centres are device tensors,
so one graph serves every block of a bucket.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .attention import rotation
from .config import MEDIAN
from .model import Toto2Model, group_masks, patch_statistics, scaled_patches


class BlockBuffers(NamedTuple):
    """A call's state, allocated once per shape and reused."""

    values: Float[Tensor, "batch variate time"]  # context, then medians as they are decoded
    observed: Bool[Tensor, "batch variate time"]
    groups: Int[Tensor, "batch variate slots"]  # -1: a context patch with nothing observed
    caches: list[tuple[Tensor, Tensor]]  # per time layer: keys, values [rows, kv_heads, slots, dim]

    def cache_tensors(self) -> list[Tensor]:
        return [t for pair in self.caches for t in pair]

    def tensors(self) -> list[Tensor]:
        return [self.values, self.observed, self.groups, *self.cache_tensors()]


def decode_block(
    model: Toto2Model,
    buffers: BlockBuffers,
    start: Int[Tensor, ""],
    offset: Int[Tensor, ""],
    center: Int[Tensor, ""],
    tokens: int,
    block: int,
) -> Float[Tensor, "quantile batch variate block step"]:
    """Decode ``block`` patches from ``tokens`` slots starting at ``start``, whose last
    ``block`` are the unknown patches; write their medians back as observed values.

    ``offset``: slots of padding before upstream's position 0; ``center``: xPos's centre,
    upstream's (last position of its call + 1) // 2.
    """
    patch = model.patch_size
    x, time_mask, variate_mask, turn, slots, steps, loc, scale = _call_inputs(model, buffers, start, offset, center, tokens)
    # The token before each unknown patch forecasts it: only those are computed to the end.
    hidden = model.transformer(x, time_mask, variate_mask, turn, buffers.caches, slots, outputs=block + 1)
    head = model.output_head(hidden[..., :-1, :])[..., :patch, :].float()
    quantiles = knots_of(head, loc[..., -block:], scale[..., -block:])  # [batch, variate, block, step, quantile]
    medians = quantiles[..., MEDIAN].flatten(-2)
    new_steps = steps[-block * patch :]
    buffers.values.index_copy_(-1, new_steps, medians)
    buffers.observed.index_fill_(-1, new_steps, True)
    return rearrange(quantiles, "batch variate block step quantile -> quantile batch variate block step")


def encode_slots(
    model: Toto2Model,
    buffers: BlockBuffers,
    start: Int[Tensor, ""],
    offset: Int[Tensor, ""],
    center: Int[Tensor, ""],
    tokens: int,
    last: Int[Tensor, ""],
) -> Float[Tensor, "batch variate step quantile"]:
    """Encode ``tokens`` slots from ``start`` as they stand (writing their keys and values), and
    return the knots of the patch after slot ``last``, forecast from it (a live stream's step)."""
    patch = model.patch_size
    x, time_mask, variate_mask, turn, slots, _, loc, scale = _call_inputs(model, buffers, start, offset, center, tokens)
    hidden = model.transformer(x, time_mask, variate_mask, turn, buffers.caches, slots)
    at = (last - start).reshape(1)
    head = model.output_head(hidden.index_select(-2, at))[..., :patch, :].float()  # [batch, variate, 1, step, quantile]
    # The next patch is unobserved: its statistics are those through ``last``.
    return knots_of(head, loc.index_select(-1, at), scale.index_select(-1, at))[..., 0, :, :]


def _call_inputs(
    model: Toto2Model, buffers: BlockBuffers, start: Tensor, offset: Tensor, center: Tensor, tokens: int
) -> tuple[Tensor, ...]:
    """A call's embedded tokens, masks, rotation, slots, steps and per-slot loc and scale."""
    patch = model.patch_size
    config = model.config
    slots = start + torch.arange(tokens, device=start.device)
    loc, scale = patch_statistics(buffers.values, buffers.observed, patch)  # [batch, variate, all patches]
    loc, scale = loc.index_select(-1, slots), scale.index_select(-1, slots)
    steps = (slots[:, None] * patch + torch.arange(patch, device=slots.device)).flatten()
    values = buffers.values.index_select(-1, steps)
    observed = buffers.observed.index_select(-1, steps)
    dtype = model.patch_proj.linear1.weight.dtype
    x = model.embed(
        scaled_patches(values, observed, loc, scale, patch).to(dtype),
        rearrange(observed, "... (patch step) -> ... patch step", step=patch),
    )
    all_slots = torch.arange(buffers.groups.shape[-1], device=slots.device)
    time_mask, variate_mask = group_masks(buffers.groups, slots, all_slots)
    turn = rotation(slots - offset, center, config.qk_dim // 2, config.use_xpos)
    return x, time_mask, variate_mask, turn, slots, steps, loc, scale


def knots_of(
    head: Float[Tensor, "... patch step quantile"], loc: Float[Tensor, "... patch"], scale: Float[Tensor, "... patch"]
) -> Float[Tensor, "... patch step quantile"]:
    """The output head's knots in the data's units: sinh, un-scaled with each patch's statistics,
    infinities clamped within the patch, sorted."""
    return clamp_infinities(head.sinh() * scale[..., None, None] + loc[..., None, None]).sort(dim=-1).values


def clamp_infinities(x: Float[Tensor, "... step quantile"]) -> Tensor:
    """+-inf to the largest / smallest finite value of its patch (upstream's rule)."""
    top = torch.where(x.isfinite(), x, -torch.inf).amax(dim=-2, keepdim=True)
    bottom = torch.where(x.isfinite(), x, torch.inf).amin(dim=-2, keepdim=True)
    return torch.where(x == torch.inf, top, torch.where(x == -torch.inf, bottom, x))
