"""Input container and padding helpers (upstream's ``toto.data.util.dataset`` path)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor


class MaskedTimeseries(NamedTuple):
    """A (batch of) multivariate series. A leading batch dimension is optional.

    ``padding_mask`` is True where a value is *observed*. ``id_mask`` groups
    variates: only variates with equal ids attend to each other (its time
    dimension may be 1 to broadcast). Timestamps are carried for API
    compatibility; Toto 1.0 does not use them.
    """

    series: Float[Tensor, "*batch variate time"]
    padding_mask: Bool[Tensor, "*batch variate time"]
    id_mask: Int[Tensor, "*batch variate #time"]
    timestamp_seconds: Int[Tensor, "*batch variate time"]
    time_interval_seconds: Int[Tensor, "*batch variate"]
    num_exogenous_variables: int = 0

    def to(self, device: torch.device | str) -> "MaskedTimeseries":
        return self._replace(**{k: v.to(device) for k, v in self._asdict().items() if isinstance(v, Tensor)})


def masked_timeseries(
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"] | None = None,
    time_interval_seconds: int = 900,
    container: type = MaskedTimeseries,
) -> MaskedTimeseries:
    """``series`` with every variate in one id group, zero timestamps, and ``observed``
    (default: all True), on ``series``' device. ``container`` may be another class
    with the same fields (upstream's, in the benchmark)."""
    return container(
        series=series,
        padding_mask=torch.ones_like(series, dtype=torch.bool) if observed is None else observed.to(series.device),
        id_mask=torch.zeros_like(series, dtype=torch.int),
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int),
        time_interval_seconds=torch.full(series.shape[:-1], time_interval_seconds, dtype=torch.int, device=series.device),
    )


def first_observed_step(observed: Bool[Tensor, "batch variate time"]) -> Int[Tensor, " batch"]:
    """Each series' first step observed in any of its variates (0 if none is); no host sync."""
    return observed.any(dim=1).int().argmax(dim=-1)


def padded_length(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def pad_array(values: Shaped[Tensor, "*batch variate time"], multiple: int) -> Shaped[Tensor, "*batch variate padded"]:
    """Left-pad the time axis with zeros (False for masks) to a multiple of ``multiple``."""
    values = torch.as_tensor(values)
    amount = padded_length(values.shape[-1], multiple) - values.shape[-1]
    if amount == 0:
        return values
    return torch.cat((values.new_zeros((*values.shape[:-1], amount)), values), dim=-1)


def pad_id_mask(id_mask: Int[Tensor, "*batch variate time"], multiple: int) -> Int[Tensor, "*batch variate padded"]:
    """Left-pad ids by repeating each variate's left-edge id."""
    amount = padded_length(id_mask.shape[-1], multiple) - id_mask.shape[-1]
    if amount == 0:
        return id_mask
    edge = id_mask[..., :1].expand(*id_mask.shape[:-1], amount)
    return torch.cat((edge, id_mask), dim=-1)


def fill_missing(series: Float[Tensor, "*batch variate time"]) -> tuple[Tensor, Bool[Tensor, "*batch variate time"]]:
    """NaN -> the last observed value before it (0 before the first, like left padding), and where NaN was.

    The caller masks those steps out of the scaler statistics; the filled value only
    keeps the model's input near the series' level, where a 0 at a level of 3e4 would
    be a spike of hundreds of standard deviations.
    """
    missing = torch.isnan(series)
    if not missing.any():
        return series, missing
    steps = torch.arange(series.shape[-1], device=series.device).expand_as(series)
    last_seen = torch.where(missing, 0, steps).cummax(dim=-1).values
    seen_before = (~missing).cumsum(dim=-1) > 0
    filled = torch.where(seen_before, series.gather(-1, last_seen), torch.zeros_like(series))
    return filled, missing


def replace_extreme_values(t: Tensor, replacement: float = 0.0) -> Tensor:
    """Replace inf, NaN and values with ``|x| >= finfo.max / 2`` (upstream's guard in decoding)."""
    extreme = ~torch.isfinite(t) | (t.abs() >= torch.finfo(t.dtype).max / 2)
    return torch.where(extreme, torch.full_like(t, replacement), t)
