"""Argument checks shared by the forecaster and the pipeline; messages name the argument."""

from __future__ import annotations

import torch


def check_int(name: str, value: object, minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


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
    if not values.is_floating_point() or torch.finfo(values.dtype).max <= torch.finfo(dtype).max:
        return
    too_big = torch.isfinite(values) & (values.abs() > torch.finfo(dtype).max)  # NaN, ±inf: reported elsewhere
    if too_big.any():
        where = tuple(too_big.nonzero()[0].tolist())
        raise ValueError(
            f"{name}: the value {values[where].item():.6g} at index {where} overflows {dtype} "
            f"(largest {torch.finfo(dtype).max:.4g}), the dtype the model reads; rescale the series"
        )
