"""Argument checks shared by the forecaster and the pipeline; messages name the argument."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported on first use: the commands' parsers read this module
    import torch
    from torch import Tensor


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def is_real_number(value: object) -> bool:
    """An int or float, not a bool (NaN and infinities included: check those apart)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_num_exogenous(value: object, variates: int, name: str = "num_exogenous_variables") -> None:
    """Raise ``ValueError`` unless ``value`` counts exogenous variates (the last ones) leaving at least one target."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < variates:
        raise ValueError(
            f"{name}={value!r}: must be an int from 0 to the number of variates less one ({variates - 1}); "
            "the last ones are the exogenous variates"
        )


def check_representable(values: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """Raise ``ValueError`` naming the first finite value of ``values`` that overflows ``dtype``.

    Casting such a value gives ±inf, which would otherwise be reported as if the
    input itself held an infinity.
    """
    import torch

    if not values.is_floating_point() or torch.finfo(values.dtype).max <= torch.finfo(dtype).max:
        return
    too_big = torch.isfinite(values) & (values.abs() > torch.finfo(dtype).max)  # NaN, ±inf: reported elsewhere
    if too_big.any():
        where = tuple(too_big.nonzero()[0].tolist())
        raise ValueError(
            f"{name}: the value {values[where].item():.6g} at index {where} overflows {dtype} "
            f"(largest {torch.finfo(dtype).max:.4g}), the dtype the model reads; rescale the series"
        )


def as_float_tensor(value: Any, name: str) -> Tensor:
    """``value`` (tensor, array or nested list of numbers) as a detached CPU float32 tensor; errors name ``name``."""
    import torch

    try:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be numeric, got {type(value).__name__} ({err})") from err
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise TypeError(f"{name} must be numeric, got dtype {tensor.dtype}")
    check_representable(tensor, torch.float32, name)
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def as_batch_variate_time(values: Tensor, name: str) -> Tensor:
    """A 1-D (one series), 2-D (a batch of univariate series) or 3-D tensor as ``[batch, variate, time]``."""
    if values.ndim == 1:
        return values[None, None]
    if values.ndim == 2:
        return values[:, None]
    if values.ndim != 3:
        raise ValueError(f"{name} must have 1, 2 or 3 dimensions, got shape {tuple(values.shape)}")
    return values
