"""The context forms ``predict`` accepts, normalised to ``[batch, variate, time]`` plus an
observation mask; covariates and sample keys checked against it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..arguments import as_batch_variate_time, as_float_tensor
from ..inference.inputs import known_future


def keys_tensor(keys: Any, count: int) -> Tensor:
    """``sample_keys`` as int64, one per series."""
    try:
        array = np.asarray(keys.cpu() if isinstance(keys, Tensor) else keys)
    except (TypeError, ValueError) as err:
        raise ValueError(f"sample_keys must be integers, one per series: {err}") from None
    if array.shape != (count,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"sample_keys must be {count} integers (one per series), got {array.dtype} of shape {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def covariates_tensor(future: Any, series: Tensor, prediction_length: int) -> Tensor:
    """``future_covariates`` as a validated float tensor ``(batch, covariates, prediction_length)``."""
    try:
        future = torch.as_tensor(np.asarray(future, dtype=np.float64) if not isinstance(future, Tensor) else future)
    except (TypeError, ValueError) as err:
        raise ValueError(f"future_covariates must be a numeric array or tensor: {err}") from None
    if future.ndim == 2 and series.shape[0] == 1:
        future = future[None]
    batch, variates, _ = series.shape
    if future.ndim != 3:
        raise ValueError(
            f"future_covariates must be (batch, covariates, prediction_length), or (covariates, prediction_length) "
            f"for one series; got shape {tuple(future.shape)} for a context of shape {tuple(series.shape)}"
        )
    if not 0 < future.shape[1] < variates:
        raise ValueError(
            f"future_covariates has {future.shape[1]} covariates but the context has {variates} variates: the "
            "covariates are the context's last variates, and at least one target must remain"
        )
    known_future(future, future.shape[1], series, prediction_length, prediction_length, name="future_covariates")
    return future


def normalize_context(context: Any) -> tuple[Tensor, Tensor]:
    """Any accepted context form -> ``(series [batch, variate, time] float32, observed mask)``.

    1-D: one series. 2-D tensor/array: a batch of equal-length series. 3-D: (batch,
    variate, time). A list of 1-D series of different lengths is left-padded with NaN.
    NaN marks a missing value: ``observed`` is False there (the forecaster fills it).
    """
    if isinstance(context, (str, bytes)):
        raise TypeError(f"context must be numeric (tensor, array or list), got {type(context).__name__}")
    if isinstance(context, (list, tuple)) and context and all(_is_1d(c) for c in context):
        rows = [as_float_tensor(c, f"context[{i}]") for i, c in enumerate(context)]
        for i, row in enumerate(rows):
            if row.numel() == 0:
                raise ValueError(f"context[{i}] has no values; every series needs at least one")
        length = max(r.shape[0] for r in rows)
        series = torch.full((len(rows), 1, length), math.nan)
        for i, r in enumerate(rows):
            series[i, 0, length - r.shape[0] :] = r
    else:
        series = as_batch_variate_time(as_float_tensor(context, "context"), "context")
    if series.shape[0] == 0 or series.shape[1] == 0 or series.shape[-1] == 0:
        raise ValueError(f"context is empty (shape {tuple(series.shape)})")
    infinite = torch.isinf(series)
    if infinite.any():
        batch, variate, step = infinite.nonzero()[0].tolist()
        raise ValueError(
            f"context: series {batch} (variate {variate}) has ±inf at position {step}; use NaN for a missing value"
        )
    observed = ~torch.isnan(series)
    empty = ~observed.any(dim=-1)
    if empty.any():
        batch, variate = empty.nonzero()[0].tolist()
        raise ValueError(f"context: series {batch} (variate {variate}) has no observed value (all NaN)")
    return series, observed


def _is_1d(value: Any) -> bool:
    if isinstance(value, (Tensor, np.ndarray)):
        return value.ndim == 1
    return isinstance(value, (list, tuple))
