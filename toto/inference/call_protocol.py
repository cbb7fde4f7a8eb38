"""Decoding through the model's call protocol, one call per patch, as upstream's forecaster does.

The slow path: the forecaster takes it for ``use_kv_cache=False`` and for a model that is not
our :class:`~toto.model.backbone.TotoBackbone` but follows upstream's protocol (see
:func:`decode_by_calls`). Each call sees the whole grown series.
"""

from __future__ import annotations

import torch
from einops import repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor
from torch.distributions import Distribution

from ..model.distribution import AffineTransformed, MixtureOfStudentT
from .decoding import next_patch


def decode_by_calls(
    model,
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"],
    ids: Int[Tensor, "batch variate time"],
    patch_size: int,
    num_steps: int,
    sample_rows: int | None,
    future: Float[Tensor, "batch exogenous steps_x_patch"] | None = None,
    num_exogenous: int = 0,
    use_kv_cache: bool = False,
) -> Float[Tensor, "rows variate steps_x_patch"]:
    """``num_steps`` patches after ``series`` (whole patches): the mean path, or ``sample_rows`` draws
    per series laid out (draw, series). Known future values replace the last ``future.shape[1]`` variates.

    ``model`` follows upstream's protocol (our backbone, a wrapper, a test double, upstream's own):

    * ``model(inputs=, input_padding_mask=, id_mask=, kv_cache=, scaling_prefix_length=,
      num_exogenous_variables=)`` returns ``(distribution, loc, scale)``: a distribution in
      the scaled space over the last ``T`` steps (``T`` >= one patch) and the scaler's
      ``loc``/``scale`` over at least those steps;
    * ``model.allocate_kv_cache(batch_size=, num_variates=, max_time_steps=, device=, dtype=)``
      returns a cache to pass back, or None; a model with a cache encodes only the newest patch.
    """
    if sample_rows is not None:
        layout = "series variate time -> (draw series) variate time"
        series, observed, ids = (repeat(t, layout, draw=sample_rows) for t in (series, observed, ids))
        future = None if future is None else repeat(future, layout, draw=sample_rows)
    rows, variates, prefix_length = series.shape
    cache = None
    if use_kv_cache:
        cache = model.allocate_kv_cache(
            batch_size=rows,
            num_variates=variates,
            max_time_steps=prefix_length + num_steps * patch_size,
            device=series.device,
            dtype=series.dtype,
        )
    patches = []
    for step in range(num_steps):
        base, loc, scale = model(
            inputs=series,
            input_padding_mask=observed,
            id_mask=ids,
            kv_cache=cache,
            scaling_prefix_length=prefix_length,
            num_exogenous_variables=num_exogenous,
        )
        distribution = _last_steps(base, loc, scale, patch_size)
        patch = next_patch(distribution, sample_rows is not None)[..., -patch_size:].to(series.dtype)
        if future is not None:
            patch[:, -future.shape[1] :] = future[..., step * patch_size : (step + 1) * patch_size]
        patches.append(patch)
        series = torch.cat((series, patch), dim=-1)
        observed = torch.cat((observed, torch.ones_like(patch, dtype=torch.bool)), dim=-1)
        ids = torch.cat((ids, ids[..., -1:].expand_as(patch)), dim=-1)
    return torch.cat(patches, dim=-1)


def _last_steps(base: Distribution, loc: Tensor, scale: Tensor, count: int) -> AffineTransformed:
    """The data-space distribution of the steps ``base`` covers (only the last ``count`` for our mixture)."""
    if isinstance(base, MixtureOfStudentT):
        base = base.last_steps(count)  # the rest would be computed and thrown away
    steps = base.batch_shape[-1]
    return AffineTransformed(base, loc[..., -steps:], scale[..., -steps:])
