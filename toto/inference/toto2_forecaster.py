"""Toto 2.0's forecast loop: pads, fills static buffers, runs one compiled block function per
decoding block (``toto.toto2.decoding``), and returns quantiles at the model's knots."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..compile.policy import CompiledFunction, CompileSettings
from ..toto2.decoding import BlockBuffers, decode_block
from ..toto2.model import Toto2Model
from .capacity import CAPACITY_BUCKET, bucket_capacity, decode_capacity, pooled
from .decoding import mark_static

# Upstream's quick start decodes in blocks of 768 steps, feeding each block's medians back.
DEFAULT_DECODE_BLOCK_SIZE = 768


def block_bucket(patches: int) -> int:
    """Unknown patches a single-block call decodes at once: powers of two up to a capacity
    bucket, then whole buckets (a few extra patches after the horizon change nothing: causal)."""
    return decode_capacity(patches) if patches <= CAPACITY_BUCKET else bucket_capacity(patches)


def check_block_size(decode_block_size: int | None, patch_size: int) -> int:
    """``decode_block_size`` in patches; 0 (or None) decodes the whole horizon in one block."""
    if decode_block_size is None:
        return 0
    if isinstance(decode_block_size, bool) or not isinstance(decode_block_size, int) or decode_block_size < 0:
        raise ValueError(f"decode_block_size must be a non-negative int or None, got {decode_block_size!r}")
    if decode_block_size % patch_size:
        raise ValueError(
            f"decode_block_size ({decode_block_size}) must be a multiple of the patch size ({patch_size})"
        )
    return decode_block_size // patch_size


class Toto2Forecaster:
    """Quantile forecasts of a Toto 2.0 model, eager or compiled, with buffers reused per shape."""

    def __init__(self, model: Toto2Model, settings: CompileSettings = CompileSettings()):
        self.model = model.eval()
        self.compile_settings = settings
        self._block = CompiledFunction(decode_block, settings, dynamic=False)
        self._buffers: OrderedDict[tuple, BlockBuffers] = OrderedDict()

    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @property
    def compiled(self) -> bool:
        return self._block.active

    @property
    def compile_error(self) -> str | None:
        return self._block.error

    def clear_buffers(self) -> None:
        self._buffers.clear()

    def plan(self, context_length: int, prediction_length: int, decode_block_size: int | None) -> BlockPlan:
        return BlockPlan.of(
            context_length, prediction_length, check_block_size(decode_block_size, self.patch_size), self.patch_size
        )

    @torch.no_grad()
    def forecast(
        self,
        series: Float[Tensor, "batch variate time"],
        observed: Bool[Tensor, "batch variate time"],
        prediction_length: int,
        decode_block_size: int | None = DEFAULT_DECODE_BLOCK_SIZE,
        progress: Callable[[int, int], None] | None = None,
    ) -> Float[Tensor, "quantile batch variate horizon"]:
        """Quantiles at ``QUANTILE_LEVELS`` (dimension 0), as upstream's ``Toto2Model.forecast``.

        Unobserved values count only in the context's last patch, which upstream treats as
        observed (fill them first, e.g. carried forward); non-finite values are missing (0).
        """
        if series.dim() != 3 or observed.shape != series.shape:
            raise ValueError(
                f"series and observed must both be [batch, variate, time], got {tuple(series.shape)} "
                f"and {tuple(observed.shape)}"
            )
        if isinstance(prediction_length, bool) or not isinstance(prediction_length, int) or prediction_length < 1:
            raise ValueError(f"prediction_length must be a positive int, got {prediction_length!r}")
        if series.shape[-1] < self.patch_size:
            raise ValueError(
                f"context: {series.shape[-1]} steps is shorter than one patch ({self.patch_size} steps)"
            )
        plan = self.plan(series.shape[-1], prediction_length, decode_block_size)
        buffers = self._fill(series, observed.bool(), plan)
        device = series.device
        offset = torch.tensor(plan.offset, device=device)
        blocks = []
        for index, (start, tokens, decoded, center) in enumerate(plan.calls(plan.context_slots, first_start=0)):
            quantiles = self._block(
                self.model, buffers, torch.tensor(start, device=device), offset, torch.tensor(center, device=device),
                tokens, plan.block,
            )  # fmt: skip
            blocks.append(quantiles[..., :decoded, :].flatten(-2))
            if progress is not None:
                progress(index + 1, plan.blocks)
        return torch.cat(blocks, -1)[..., :prediction_length].to(series.dtype)

    def _fill(self, series: Tensor, observed: Tensor, plan: "BlockPlan") -> BlockBuffers:
        batch, variates, _ = series.shape
        buffers = self._buffers_for(batch, variates, plan.slots, series.device)
        fill_context(buffers, series, observed, plan.context_slots, self.patch_size)
        return buffers

    def _buffers_for(self, batch: int, variates: int, slots: int, device: torch.device) -> BlockBuffers:
        dtype = next(self.model.parameters()).dtype
        key = (batch, variates, slots, dtype, device)
        return pooled(self._buffers, key, lambda: allocate(self.model, *key))


def fill_context(buffers: BlockBuffers, series: Tensor, observed: Tensor, end: int, patch: int) -> Tensor:
    """Clear ``buffers`` and write a context into them, ending at slot ``end`` (left-padded
    before it), with each slot's group. Returns the true mask of the context's last patch,
    which is then read as observed (upstream's rule: training never ended on a gap)."""
    length = series.shape[-1]
    finite = series.isfinite()  # NaN or inf: missing, as everywhere in this package
    values, observed = torch.where(finite, series, 0.0).float(), observed & finite
    for t in (buffers.values, buffers.observed, buffers.groups):
        t.zero_()
    start = end * patch - length
    buffers.values[..., start : start + length] = values
    buffers.observed[..., start : start + length] = observed
    last_patch = slice((end - 1) * patch, end * patch)
    true_mask = buffers.observed[..., last_patch].clone()
    buffers.observed[..., last_patch] = True
    seen = buffers.observed[..., : end * patch].unflatten(-1, (-1, patch)).any(-1)
    buffers.groups[..., :end] = torch.where(seen, 0, -1)
    return true_mask


def allocate(
    model: Toto2Model, batch: int, variates: int, slots: int, dtype: torch.dtype, device: torch.device
) -> BlockBuffers:
    """Zeroed buffers for calls of this shape, at fixed addresses (CUDA graphs replay them in place)."""
    config, patch, rows = model.config, model.patch_size, batch * variates
    caches = [
        (
            torch.zeros(rows, config.num_groups, slots, config.qk_dim, dtype=dtype, device=device),
            torch.zeros(rows, config.num_groups, slots, config.v_dim, dtype=dtype, device=device),
        )
        for _ in range(config.num_time_layers)
    ]
    buffers = BlockBuffers(
        values=torch.zeros(batch, variates, slots * patch, device=device),
        observed=torch.zeros(batch, variates, slots * patch, dtype=torch.bool, device=device),
        groups=torch.zeros(batch, variates, slots, dtype=torch.long, device=device),
        caches=caches,
    )
    mark_static(buffers.tensors())
    return buffers


@dataclass(frozen=True)
class BlockPlan:
    """How a call decodes: context and forecast slots, block sizes and the number of blocks."""

    context_patches: int
    context_slots: int  # the context's patches left-padded to a capacity bucket
    horizon_patches: int
    block_patches: int  # upstream's block: patches decoded per block
    block: int  # unknown patches per call, a static shape (>= block_patches in a single block)
    blocks: int
    slots: int  # cache and buffer length, in patches

    @classmethod
    def of(cls, context_length: int, prediction_length: int, block_size: int, patch_size: int) -> "BlockPlan":
        context_patches = -(-context_length // patch_size)
        horizon = -(-prediction_length // patch_size)
        block_patches = min(block_size, horizon) if block_size else horizon
        blocks = -(-horizon // block_patches)
        block = block_patches if blocks > 1 else min(block_bucket(horizon), block_size or block_bucket(horizon))
        context_slots = bucket_capacity(context_patches)
        slots = context_slots + (decode_capacity(blocks) * block if blocks > 1 else block)
        return cls(context_patches, context_slots, horizon, block_patches, block, blocks, slots)

    def calls(self, context_end: int, first_start: int) -> Iterator[tuple[int, int, int, int]]:
        """Each block's call, ``(start, tokens, decoded, center)``: the context ends at slot
        ``context_end`` and the first call reads from slot ``first_start`` (a fresh call reads
        the whole context; a live stream only its last patch). ``center`` is upstream's."""
        for index in range(self.blocks):
            decoded = min(self.block_patches, self.horizon_patches - index * self.block_patches)
            center = (self.context_patches + index * self.block_patches + decoded) // 2
            if index == 0:
                yield first_start, context_end - first_start + self.block, decoded, center
            else:
                yield context_end + (index - 1) * self.block, 2 * self.block, decoded, center

    @property
    def offset(self) -> int:
        """Padding slots before upstream's position 0."""
        return self.context_slots - self.context_patches
