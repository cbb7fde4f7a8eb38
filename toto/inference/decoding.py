"""Decode state: prefill a context once, copy it into every sample row, then append one patch per step.

All decoding state lives in preallocated buffers (:class:`DecodeBuffers`) that
:func:`decode_step` updates in place: the KV cache, the running float64 scaler
sums, the newest patch and the write position (a 0-d device tensor). The step
therefore has static shapes, reads nothing back to the host and re-binds no
tensor, so it compiles to one graph that CUDA graphs can replay; buffers are
marked as static addresses for that reason. How many patches the cache holds
is host bookkeeping, done by the caller through ``KVCache.advance``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..data.util.dataset import replace_extreme_values
from ..model.backbone import TotoBackbone
from ..model.distribution import AffineTransformed, MixtureOfStudentT
from ..model.kv_cache import KVCache
from ..model.scaler import ScalerState


class DecodeBuffers(NamedTuple):
    cache: KVCache
    scaler: ScalerState
    last_ids: Int[Tensor, "rows variate"]  # id of the newest patch; decoded patches inherit it
    position: Int[Tensor, ""]  # cache slot the next patch is written to
    patch: Float[Tensor, "rows variate patch"]  # newest patch: input of the next step, output of the last

    @classmethod
    def allocate(cls, model: TotoBackbone, rows: int, variates: int, capacity: int, dtype, device) -> "DecodeBuffers":
        cache = KVCache(
            model.transformer.num_time_layers,
            rows=rows * variates,
            num_heads=model.config.num_heads,
            head_dim=model.config.head_dim,
            capacity=capacity,
            device=device,
            dtype=dtype,
        )
        stats = ScalerState(*(torch.zeros(rows, variates, dtype=torch.float64, device=device) for _ in range(5)))
        buffers = cls(
            cache=cache,
            scaler=stats,
            last_ids=torch.zeros(rows, variates, dtype=torch.long, device=device),
            position=torch.zeros((), dtype=torch.long, device=device),
            patch=torch.zeros(rows, variates, model.patch_size, dtype=dtype, device=device),
        )
        for tensor in buffers.tensors():
            torch._dynamo.mark_static_address(tensor)
        return buffers

    def tensors(self) -> list[Tensor]:
        return [*self.cache.tensors(), *self.scaler, self.last_ids, self.position, self.patch]


class Prefilled(NamedTuple):
    """A context encoded once: the next patch's distribution and what every sample row starts from."""

    distribution: AffineTransformed
    scaler: ScalerState
    last_ids: Int[Tensor, "batch variate"]
    num_patches: int


def encode_context(
    model: TotoBackbone,
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"],
    id_mask: Int[Tensor, "batch variate time"],
    cache: KVCache,
    positions: Int[Tensor, " patches"],
) -> tuple[Tensor, ...]:
    """The compilable core of :func:`prefill`: tensors in, tensors out, ``cache`` written in place.

    Returns the next patch's mixture parameters (df, loc, scale, logits), its
    affine loc and scale, the five scaler-state tensors and the last patch's ids.
    """
    scaled, loc, scale, stats = model.scaler(series, observed, prefix_length=series.shape[-1])
    ids = model.id_patches(id_mask, series)
    mixture = model.head(model.encode(scaled, ids, positions, cache)[:, :, -1:])
    return (mixture.df, mixture.loc, mixture.scale, mixture.logits, loc[..., -1:], scale[..., -1:], *stats, ids[..., -1])


def prefill(
    model: TotoBackbone,
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"],
    id_mask: Int[Tensor, "batch variate time"],
    cache: KVCache,
    encode: Callable[..., tuple[Tensor, ...]] = encode_context,
) -> Prefilled:
    """Encode a padded context into ``cache`` (one row per series and variate).

    ``encode`` is :func:`encode_context` or a compiled version of it.
    """
    num_patches = series.shape[-1] // model.patch_size
    cache.reset()
    # Cloned: a CUDA graph's outputs are overwritten by its next replay.
    outputs = [t.clone() for t in encode(model, series, observed, id_mask, cache, cache.reserve(num_patches))]
    df, mixture_loc, mixture_scale, logits, loc, scale, *stats, last_ids = outputs
    distribution = AffineTransformed(MixtureOfStudentT(df, mixture_loc, mixture_scale, logits), loc, scale)
    return Prefilled(distribution, ScalerState(*stats), last_ids, num_patches)


def share_context(buffers: DecodeBuffers, context: KVCache, num_patches: int) -> None:
    """Copy the first ``num_patches`` cache slots of ``context`` into every sample block of ``buffers``.

    Decoding never writes below ``num_patches``, so this is needed once per call.
    """
    for dst, src in zip(buffers.cache.tensors(), context.tensors()):
        dst[:, :, :num_patches].unflatten(0, (-1, src.shape[0])).copy_(src[:, :, :num_patches].unsqueeze(0))


def start(buffers: DecodeBuffers, prefilled: Prefilled, first_patch: Float[Tensor, "rows variate patch"]) -> None:
    """Reset ``buffers`` to just after the context, with ``first_patch`` as the newest patch.

    Rows are laid out (sample, series), samples outermost.
    """
    batch = prefilled.last_ids.shape[0]
    for dst, src in zip(buffers.scaler, prefilled.scaler):
        dst.unflatten(0, (-1, batch)).copy_(src)
    buffers.last_ids.unflatten(0, (-1, batch)).copy_(prefilled.last_ids)
    buffers.position.fill_(prefilled.num_patches)
    buffers.patch.copy_(first_patch)
    buffers.cache.length = prefilled.num_patches


def next_patch(distribution: AffineTransformed, sample: bool, draws: tuple[int, ...] = ()) -> Tensor:
    """The distribution's mean, or a draw (``draws`` extra leading dims), with extreme values replaced."""
    return replace_extreme_values(distribution.sample(draws) if sample else distribution.mean)


def decode_step(model: TotoBackbone, buffers: DecodeBuffers, sample: bool) -> None:
    """Append ``buffers.patch`` at ``buffers.position`` and replace it with the next patch (a draw or the mean)."""
    scaled, loc, scale, stats = model.scaler.step(buffers.scaler, buffers.patch)
    hidden = model.encode(scaled, buffers.last_ids[..., None], buffers.position[None], buffers.cache)
    distribution = AffineTransformed(model.head(hidden), loc[..., None], scale[..., None])
    buffers.patch.copy_(next_patch(distribution, sample))
    for dst, src in zip(buffers.scaler[:3], stats[:3]):  # the clamp bounds never change
        dst.copy_(src)
    buffers.position.add_(1)


# One function per mode, so each compiles to exactly one graph (a bool argument would be a guard).
def sample_step(model: TotoBackbone, buffers: DecodeBuffers) -> None:
    decode_step(model, buffers, sample=True)


def mean_step(model: TotoBackbone, buffers: DecodeBuffers) -> None:
    decode_step(model, buffers, sample=False)
