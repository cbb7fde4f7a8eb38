"""Checks and conversions of the forecaster's inputs; every message names the argument."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ..arguments import check_num_exogenous, check_representable
from ..data.util.dataset import MaskedTimeseries, fill_missing


def checked_keys(keys: Tensor, batch: int, device: torch.device) -> Int[Tensor, " batch"]:
    keys = torch.as_tensor(keys)
    if keys.shape != (batch,) or keys.dtype != torch.long:
        raise ValueError(
            f"sample_keys must be an int64 tensor of shape ({batch},), one key per series; "
            f"got {keys.dtype} of shape {tuple(keys.shape)}"
        )
    return keys.to(device)


def as_masked(
    series: Tensor,
    timestamp_seconds: Tensor,
    time_interval_seconds: Tensor,
    padding_mask: Tensor | None,
    id_mask: Tensor | None,
    num_exogenous_variables: int,
) -> MaskedTimeseries:
    return MaskedTimeseries(
        series=series,
        padding_mask=torch.ones_like(series, dtype=torch.bool) if padding_mask is None else padding_mask,
        id_mask=torch.zeros_like(series, dtype=torch.int) if id_mask is None else id_mask,
        timestamp_seconds=timestamp_seconds,
        time_interval_seconds=time_interval_seconds,
        num_exogenous_variables=num_exogenous_variables,
    )


def known_future(
    future: Tensor | None,
    num_exogenous: int,
    series: Tensor,
    padded_length: int,
    prediction_length: int,
    name: str = "future_exogenous_variables",
) -> Float[Tensor, "batch exogenous padded_horizon"] | None:
    """Validated known future of the exogenous variates, zero-padded to whole patches (as upstream), or None.

    ``name``: the argument that errors name.
    """
    batch, variates, _ = series.shape
    check_num_exogenous(num_exogenous, variates, "inputs.num_exogenous_variables")
    if future is None:
        return None
    if num_exogenous == 0:
        raise ValueError(
            f"{name} was given but inputs.num_exogenous_variables is 0: "
            "set it to the number of exogenous variates (the last ones)"
        )
    future = torch.as_tensor(future)
    if future.ndim == 2:
        future = future[None]
    expected = (batch, num_exogenous, prediction_length)
    if future.ndim != 3:
        raise ValueError(f"{name} must be [batch, exogenous, prediction_length] {expected}, got shape {tuple(future.shape)}")
    for dim, (axis, got, want) in enumerate(zip(("batch", "exogenous", "prediction_length"), future.shape, expected)):
        if got != want:
            raise ValueError(
                f"{name} has {got} along dimension {dim} ({axis}), expected {want}: "
                f"shape {tuple(future.shape)}, expected {expected}"
            )
    if not future.is_floating_point():
        future = future.to(series.dtype)
    bad = ~torch.isfinite(future)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} has a non-finite value ({future[where].item()}) at (batch, exogenous, step) "
            f"{where}: known future values must be finite"
        )
    check_representable(future, series.dtype, name)
    future = future.to(device=series.device, dtype=series.dtype)
    return F.pad(future, (0, padded_length - prediction_length))


def mask_missing(
    series: Float[Tensor, "batch variate time"], observed: Tensor
) -> tuple[Float[Tensor, "batch variate time"], Tensor]:
    """NaN counts as not observed (see :func:`fill_missing`); ±inf and series with nothing observed are errors."""
    if series.is_complex() or series.dtype == torch.bool:
        raise TypeError(f"inputs.series must hold real numbers, got dtype {series.dtype}")
    if 0 in series.shape:
        raise ValueError(f"inputs.series is empty (shape {tuple(series.shape)})")
    observed = observed.to(series.device)
    infinite = torch.isinf(series)
    if infinite.any():
        where = infinite.nonzero()[0].tolist()
        raise ValueError(
            f"inputs.series has ±inf at (batch, variate, time) {tuple(where)}; use NaN for a missing value"
        )
    if series.is_floating_point():
        series, missing = fill_missing(series)
        observed = observed & ~missing
    empty = ~observed.any(dim=-1)
    if empty.any():
        raise ValueError(
            f"inputs: series (batch, variate) {tuple(empty.nonzero()[0].tolist())} has no observed value "
            "(padding_mask all False, or all NaN)"
        )
    return series, observed
