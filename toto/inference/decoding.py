"""Decode state: prefill a context once, then append one patch per step, every sample row sharing the context.

State lives in preallocated buffers updated in place (KV cache, float64 scaler sums, newest patch,
time position as a 0-d tensor, next patch's distribution, known exogenous future). Every function
has static shapes, reads nothing back to the host and re-binds no tensor, so each compiles to one
graph that CUDA graphs can replay. A call: :func:`prefill`, then per sample batch :func:`begin`,
then :func:`decode_step` per patch; the ``keyed_*`` functions draw from per-series streams.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import torch
from einops import rearrange, repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..data.util.dataset import replace_extreme_values
from ..model.backbone import TotoBackbone
from ..model.distribution import AffineTransformed, MixtureOfStudentT
from ..model.kv_cache import KVCache, PrefixedCache
from ..model.scaler import ScalerState
from .keyed_random import Uniforms, keyed_uniforms


class DecodeBuffers(NamedTuple):
    cache: KVCache
    scaler: ScalerState
    last_ids: Int[Tensor, "rows variate"]  # id of the newest patch; decoded patches inherit it
    position: Int[Tensor, ""]  # time position of the next patch (a context's length, after prefill)
    patch: Float[Tensor, "rows variate patch"]  # newest patch (data space): input of the next step, output of the last
    first_sample: Int[Tensor, ""]  # sample rows: index of the sample batch's first sample (keyed draws)

    @classmethod
    def allocate(
        cls, model: TotoBackbone, rows: int, variates: int, capacity: int, data_dtype: torch.dtype, device
    ) -> "DecodeBuffers":
        """Buffers for ``rows`` series; the cache in the model's dtype, the patch in ``data_dtype``."""
        cache = KVCache(
            model.transformer.num_time_layers,
            rows=rows * variates,
            num_heads=model.config.num_heads,
            head_dim=model.config.head_dim,
            capacity=capacity,
            device=device,
            dtype=model.unembed.weight.dtype,
        )
        stats = ScalerState(*(torch.zeros(rows, variates, dtype=torch.float64, device=device) for _ in range(5)))
        buffers = cls(
            cache=cache,
            scaler=stats,
            last_ids=torch.zeros(rows, variates, dtype=torch.long, device=device),
            position=torch.zeros((), dtype=torch.long, device=device),
            patch=torch.zeros(rows, variates, model.patch_size, dtype=data_dtype, device=device),
            first_sample=torch.zeros((), dtype=torch.long, device=device),
        )
        mark_static(buffers.tensors())
        return buffers

    @property
    def rows(self) -> int:
        return self.last_ids.shape[0]

    def tensors(self) -> list[Tensor]:
        return [*self.cache.tensors(), *self.scaler, self.last_ids, self.position, self.patch, self.first_sample]


class NextPatch(NamedTuple):
    """The next patch's distribution: mixture parameters ``[rows, variate, patch, k]`` and the affine map."""

    df: Tensor
    loc: Tensor
    scale: Tensor
    logits: Tensor
    affine_loc: Float[Tensor, "rows variate 1"]
    affine_scale: Float[Tensor, "rows variate 1"]

    def distribution(self) -> AffineTransformed:
        mixture = MixtureOfStudentT(self.df, self.loc, self.scale, self.logits)
        return AffineTransformed(mixture, self.affine_loc, self.affine_scale)


class KnownFuture(NamedTuple):
    """Known future values of exogenous variates, which replace what the model decodes for them.

    ``values[:, :, p]`` is the patch at time position ``p`` (a step reads it through its
    position tensor, so no graph depends on the horizon's offset); ``known`` marks the
    exogenous variates (all False: nothing is replaced).
    """

    values: Float[Tensor, "rows variate capacity patch"]
    known: Bool[Tensor, "rows variate 1"]

    def apply(self, patch: Float[Tensor, "block_x_rows variate patch"], position: Int[Tensor, ""]) -> Tensor:
        """``patch`` (rows laid out (block, series)) with its known variates set to their values at ``position``."""
        rows = self.known.shape[0]
        at = self.values.index_select(2, position.reshape(1)).squeeze(2)
        # "(block series) ... -> block series ..." and back; torch, not einops: this runs every decode step.
        blocks = patch.unflatten(0, (-1, rows))
        return torch.where(self.known, at.to(patch.dtype), blocks).flatten(0, 1)


class ContextBuffers(NamedTuple):
    """A prefilled context: its decode state (one row per series), the first patch's distribution,
    the exogenous variates' known future, each series' first patch after its left padding
    (patches before it are hidden from time attention; all 0 unless the call asked for that),
    each series' random-stream key (read by keyed draws only), and how far decode steps move
    each series' xPos centre (0 but for a live stream, :mod:`toto.inference.streaming`)."""

    state: DecodeBuffers
    head: NextPatch
    future: KnownFuture
    first_real: Int[Tensor, " rows"]
    keys: Int[Tensor, " rows"]
    xpos_shift: Int[Tensor, " rows"]

    @classmethod
    def allocate(
        cls, model: TotoBackbone, rows: int, variates: int, capacity: int, data_dtype: torch.dtype, device
    ) -> "ContextBuffers":
        # The cache also holds the label tokens, if the model prepends any.
        state = DecodeBuffers.allocate(model, rows, variates, capacity + model.num_prepended_tokens, data_dtype, device)
        mixture_shape = (rows, variates, model.patch_size, model.config.k_components)
        head = NextPatch(
            *(torch.ones(mixture_shape, dtype=data_dtype, device=device) for _ in range(4)),
            *(torch.ones(rows, variates, 1, dtype=data_dtype, device=device) for _ in range(2)),
        )
        future = KnownFuture(  # one slot past the cache's: the last patch decoded is never cached
            torch.zeros(rows, variates, capacity + 1, model.patch_size, dtype=data_dtype, device=device),
            torch.zeros(rows, variates, 1, dtype=torch.bool, device=device),
        )
        first_real, keys, xpos_shift = (torch.zeros(rows, dtype=torch.long, device=device) for _ in range(3))
        mark_static([*head, *future, first_real, keys, xpos_shift])
        return cls(state, head, future, first_real, keys, xpos_shift)

    def tensors(self) -> list[Tensor]:
        return [*self.state.tensors(), *self.head, *self.future, self.first_real, self.keys, self.xpos_shift]


def as_rows(t: Float[Tensor, "block series ..."]) -> Float[Tensor, "block_x_series ..."]:
    """Blocks of per-series tensors (samples, draws) as decode rows, laid out (block, series)."""
    return rearrange(t, "block series ... -> (block series) ...")


def mark_static(tensors: Iterable[Tensor]) -> None:
    # Fixed addresses: CUDA graphs replay reads and writes of these buffers in place.
    for tensor in tensors:
        torch._dynamo.mark_static_address(tensor)


def prefill(
    model: TotoBackbone,
    context: ContextBuffers,
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"],
    id_patches: Int[Tensor, "batch variate patches"],
    last: Int[Tensor, ""],
    exogenous: Bool[Tensor, " variate"] | None = None,
    first_real: Int[Tensor, " batch"] | None = None,
) -> None:
    """Encode a context into ``context``: its cache slots, scaler state, position and next patch.

    ``series`` may run past its last real patch ``last`` (a device tensor), padded on the
    right, so that contexts of different lengths share one static shape. That is exact:
    time attention and the scaler are causal, so real patches never see the padding;
    padded steps are unobserved, so they add nothing to the scaler's sums or its global
    clamp; the xPos centring is taken from ``last``; and decoding overwrites the padded
    cache slots from ``last + 1`` on, hiding them by position until then. The patch buffer
    receives the next patch's mean, the start of the mean path. ``exogenous`` marks the
    exogenous variates, for the model's variate labels if it has them. ``first_real``: each
    series' first patch after its left padding, which time attention hides before it, now
    and in every later step (None: nothing hidden, as upstream).
    """
    patch = model.patch_size
    scaled, loc, scale, stats = model.scaler(series, observed)
    positions = torch.arange(id_patches.shape[-1], device=series.device)
    hidden = model.encode(
        scaled, id_patches, positions, context.state.cache, last, start=True, exogenous=exogenous, first_real=first_real
    )
    if first_real is None:
        context.first_real.zero_()
    else:
        context.first_real.copy_(first_real)
    at_last = last.reshape(1)
    mixture = model.fast_head(hidden.index_select(2, at_last))
    end = (at_last + 1) * patch - 1  # the last real step, whose statistics scale the next patch
    head = NextPatch(
        mixture.df, mixture.loc, mixture.scale, mixture.logits, loc.index_select(-1, end), scale.index_select(-1, end)
    )
    for dst, src in zip(context.head, head):
        dst.copy_(src)
    state = context.state
    for dst, src in zip(state.scaler, stats):
        dst.copy_(src)
    state.last_ids.copy_(id_patches.index_select(-1, at_last).squeeze(-1))
    state.position.copy_(last + 1)
    state.patch.copy_(context.future.apply(next_patch(head.distribution(), sample=False), state.position))


def begin_mean(buffers: DecodeBuffers, context: ContextBuffers) -> None:
    """Start the mean path in rows of its own (one per series), leaving the context untouched."""
    _start(buffers, context, context.state.patch)


def begin(buffers: DecodeBuffers, context: ContextBuffers) -> None:
    """Start a sample batch: every row at the end of its context, its first patch drawn."""
    _start(buffers, context, draw(context, buffers.rows // context.state.rows))


def keyed_begin(buffers: DecodeBuffers, context: ContextBuffers) -> None:
    """:func:`begin`, the first patch drawn from each series' stream (samples from ``buffers.first_sample`` on)."""
    _start(buffers, context, _keyed_draw(context, buffers.rows // context.state.rows, buffers.first_sample))


def _start(buffers: DecodeBuffers, context: ContextBuffers, first_patch: Tensor) -> None:
    blocks = buffers.rows // context.state.rows
    for dst, src in zip((*buffers.scaler, buffers.last_ids), (*context.state.scaler, context.state.last_ids)):
        dst.copy_(repeat(src, "series variate -> (block series) variate", block=blocks))
    buffers.position.copy_(context.state.position)
    buffers.patch.copy_(first_patch)


def draw(context: ContextBuffers, count: int) -> Float[Tensor, "count_x_batch variate patch"]:
    """``count`` draws of the context's next patch (known variates set), rows laid out (draw, series)."""
    drawn = as_rows(next_patch(context.head.distribution(), sample=True, draws=(count,)))
    return context.future.apply(drawn, context.state.position)


def keyed_draw(context: ContextBuffers, count: int) -> Float[Tensor, "count_x_batch variate patch"]:
    """:func:`draw`, samples ``0 .. count - 1`` of each series' stream."""
    return _keyed_draw(context, count, torch.zeros((), dtype=torch.long, device=context.keys.device))


def _keyed_draw(context: ContextBuffers, count: int, first_sample: Int[Tensor, ""]) -> Tensor:
    distribution = context.head.distribution()
    uniforms = _uniforms(context, distribution, first_sample, count, torch.zeros_like(first_sample))
    drawn = as_rows(replace_extreme_values(distribution.sample_from(uniforms)))
    return context.future.apply(drawn, context.state.position)


def _uniforms(
    context: ContextBuffers, distribution: AffineTransformed, first_sample: Tensor, count: int, step: Tensor
) -> Uniforms:
    """Uniforms ``[count, series, variate, patch]`` for the draws of decoded patch ``step``."""
    _, variates, patch = distribution.batch_shape[-3:]
    dtype = distribution.base.logits.dtype  # the mixture's own (at least float32)
    return keyed_uniforms(context.keys, first_sample, count, step, variates, patch, dtype)


def next_patch(distribution: AffineTransformed, sample: bool, draws: tuple[int, ...] = ()) -> Tensor:
    """The distribution's mean, or a draw (``draws`` extra leading dims), with extreme values replaced."""
    return replace_extreme_values(distribution.sample(draws) if sample else distribution.mean)


def decode_step(
    model: TotoBackbone,
    buffers: DecodeBuffers,
    context: ContextBuffers,
    sample: bool,
    shared_prefix: bool,
    keyed: bool = False,
) -> None:
    """Append ``buffers.patch`` at ``buffers.position`` and replace it with the next patch (a draw or the mean).

    ``shared_prefix``: ``buffers`` are sample rows laid out (sample, series) whose cache
    holds only decoded patches, and the context's cache is their shared prefix. Otherwise
    ``buffers`` are the context's own. Known future values of exogenous variates replace
    what the model decodes for them. ``keyed``: draw from each series' stream.
    """
    scaled, loc, scale, stats = model.scaler.step(buffers.scaler, buffers.patch)
    cache = buffers.cache
    if shared_prefix:
        # Prefix slots hold the context's tokens: its patches and any label token before them.
        cache = PrefixedCache(cache, context.state.cache, context.state.position + model.num_prepended_tokens)
    hidden = model.encode(
        scaled, buffers.last_ids[..., None], buffers.position[None], cache, first_real=context.first_real,
        xpos_shift=context.xpos_shift,
    )  # fmt: skip
    distribution = AffineTransformed(model.fast_head(hidden), loc[..., None], scale[..., None])
    if keyed:  # rows are (sample, series): the uniforms' leading (count, series) flattened to match
        step = buffers.position + 1 - context.state.position
        uniforms = _uniforms(context, distribution, buffers.first_sample, buffers.rows // context.state.rows, step)
        drawn = replace_extreme_values(distribution.sample_from(Uniforms(*(u.flatten(0, 1) for u in uniforms))))
    else:
        drawn = next_patch(distribution, sample)
    buffers.patch.copy_(context.future.apply(drawn, buffers.position + 1))
    for dst, src in zip(buffers.scaler[:3], stats[:3]):  # the clamp bounds never change
        dst.copy_(src)
    buffers.position.add_(1)


# One function per mode, so each compiles to exactly one graph (a bool argument would be a guard).
def sample_step(model: TotoBackbone, buffers: DecodeBuffers, context: ContextBuffers) -> None:
    decode_step(model, buffers, context, sample=True, shared_prefix=True)


def keyed_sample_step(model: TotoBackbone, buffers: DecodeBuffers, context: ContextBuffers) -> None:
    decode_step(model, buffers, context, sample=True, shared_prefix=True, keyed=True)


def mean_step(model: TotoBackbone, context: ContextBuffers) -> None:
    decode_step(model, context.state, context, sample=False, shared_prefix=False)


def prefixed_mean_step(model: TotoBackbone, buffers: DecodeBuffers, context: ContextBuffers) -> None:
    """The mean path in rows of its own over the context's cache as a shared prefix (a stream's)."""
    decode_step(model, buffers, context, sample=False, shared_prefix=True)
