"""Forecast metrics with the definitions of GluonTS's ``gluonts.ev`` (pure numpy).

Arrays are ``[..., time]``, the leading dimensions flattened into series; ``axis`` is
gluonts' (``None``: one number, ``1``: per series, ``0``: per step). Non-finite actuals are
missing and left out; forecasts must be finite. Details: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "coverage",
    "interval_coverage",
    "mae",
    "mase",
    "rmse",
    "seasonal_error",
    "seasonal_naive",
    "wql",
]

_REDUCED_AXES = {None: (0, 1), 0: 0, 1: 1}


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _float_array(values: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 0:
        raise ValueError(f"{name} must have a time dimension (the last one), got a scalar")
    return array


def _finite_array(values: ArrayLike, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = _float_array(values, name)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite (forecasts may not hold NaN or inf)")
    return array


def _check_levels(levels: Sequence[float]) -> np.ndarray:
    array = np.asarray(levels, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"levels must be a non-empty sequence of floats, got {levels!r}")
    if not ((array > 0) & (array < 1)).all():
        raise ValueError(f"levels must lie strictly between 0 and 1, got {levels!r}")
    if np.unique(array).size != array.size:
        raise ValueError(f"levels must not repeat, got {levels!r}")
    return array


@dataclass(frozen=True)
class _Batch:
    """The ``[series, time]`` view of ``actual``, its observed entries, and the axis to reduce."""

    actual: np.ndarray  # missing entries zeroed so arithmetic on them stays quiet
    observed: np.ndarray
    leading_shape: tuple[int, ...]
    axis: int | None

    @classmethod
    def of(cls, actual: ArrayLike, axis: int | None) -> _Batch:
        if axis not in _REDUCED_AXES:
            raise ValueError(f"axis must be None, 0 or 1, got {axis!r}")
        array = _float_array(actual, "actual")
        if array.shape[-1] == 0:
            raise ValueError("actual must hold at least one time step")
        flat = array.reshape(-1, array.shape[-1])
        observed = np.isfinite(flat)
        return cls(np.where(observed, flat, 0.0), observed, array.shape[:-1], axis)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.leading_shape, self.actual.shape[-1])

    def forecast(self, values: ArrayLike, name: str) -> np.ndarray:
        """``values`` checked to be finite and shaped like ``actual``, as ``[series, time]``."""
        return _finite_array(values, name, self.shape).reshape(self.actual.shape)

    def sum(self, values: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Sum over ``axis`` of the observed (and kept) entries; 0 where there are none."""
        keep = self.observed if keep is None else keep
        return np.where(keep, values, 0.0).sum(axis=_REDUCED_AXES[self.axis])

    def mean(self, values: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Mean over ``axis`` of the observed (and kept) entries; NaN where there are none."""
        keep = self.observed if keep is None else keep
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum(values, keep) / self.sum(1.0, keep)

    def result(self, reduced: np.ndarray) -> float | np.ndarray:
        if self.axis is None:
            return float(reduced)
        return reduced.reshape(self.leading_shape) if self.axis == 1 else reduced


def _fill_missing(past: np.ndarray) -> np.ndarray:
    """Carry the last observed value forward; values before the first observation take that first one."""
    observed = np.isfinite(past)
    positions = np.where(observed, np.arange(past.shape[-1]), -1)
    np.maximum.accumulate(positions, axis=-1, out=positions)
    first_observed = observed.argmax(axis=-1)[..., None]  # 0 when nothing is observed: stays NaN
    positions = np.where(positions < 0, first_observed, positions)
    return np.take_along_axis(past, positions, axis=-1)


def seasonal_naive(past: ArrayLike, prediction_length: int, season_length: int) -> np.ndarray:
    """Repeat the last ``season_length`` values of ``past`` ``[..., T]``; returns ``[..., prediction_length]``.

    Missing (non-finite) values are first filled with the last observed value
    (leading ones with the first observed), as gluonts' ``SeasonalNaivePredictor``
    imputes; a series with no observation forecasts NaN. When ``T < season_length``
    the season falls back to 1 (repeat the last value), the fallback gluonts'
    seasonal error uses; gluonts' predictor would forecast the mean instead.
    """
    horizon = _positive_int(prediction_length, "prediction_length")
    season = _positive_int(season_length, "season_length")
    array = _float_array(past, "past")
    length = array.shape[-1]
    if length == 0:
        raise ValueError("past must hold at least one time step")
    if season > length:
        season = 1
    last_season = _fill_missing(array)[..., length - season :]
    return last_season[..., np.arange(horizon) % season]


def seasonal_error(past: ArrayLike, season_length: int) -> np.ndarray:
    """MASE scale: mean of ``|past[t] - past[t - season_length]|`` over pairs with both values observed.

    Shape ``[...]`` for ``past`` ``[..., T]``. As in gluonts, the season falls back
    to 1 only when ``season_length > T`` (so ``T == season_length`` leaves no
    pair), and a series with no observed pair gets 0, not NaN: that is what
    ``evaluate_forecasts`` hands its metrics, and MASE then leaves the series out.
    """
    season = _positive_int(season_length, "season_length")
    array = _float_array(past, "past")
    length = array.shape[-1]
    if season > length:
        season = 1
    later, earlier = array[..., season:], array[..., : length - season]
    pairs = np.isfinite(later) & np.isfinite(earlier)
    total = np.where(pairs, np.abs(later - earlier), 0.0).sum(axis=-1)
    count = pairs.sum(axis=-1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def mae(actual: ArrayLike, point: ArrayLike, axis: int | None = None) -> float | np.ndarray:
    """Mean absolute error ``mean |actual - point|`` over the observed entries (gluonts ``MAE``).

    ``axis=None`` averages over all observed entries of all series.
    """
    batch = _Batch.of(actual, axis)
    error = np.abs(batch.actual - batch.forecast(point, "point"))
    return batch.result(batch.mean(error))


def rmse(actual: ArrayLike, point: ArrayLike, axis: int | None = None) -> float | np.ndarray:
    """Root mean squared error ``sqrt(mean (actual - point)^2)`` (gluonts ``RMSE``, which defaults to the mean).

    ``axis=None`` is the root of the mean over all observed entries, not a mean of per-series RMSEs.
    """
    batch = _Batch.of(actual, axis)
    error = np.square(batch.actual - batch.forecast(point, "point"))
    return batch.result(np.sqrt(batch.mean(error)))


def mase(
    actual: ArrayLike,
    point: ArrayLike,
    past: ArrayLike | None = None,
    season_length: int | None = None,
    axis: int | None = None,
    *,
    scale: ArrayLike | None = None,
) -> float | np.ndarray:
    """Mean absolute scaled error: mean of ``|actual - point| / seasonal_error(past)`` (gluonts ``MASE``).

    ``past`` is ``[..., T]`` with the leading shape of ``actual``. Instead of ``past`` and
    ``season_length``, ``scale`` (leading shape of ``actual``) may give each series'
    seasonal error, e.g. computed per series when pasts differ in length or season.
    ``axis=None`` averages the scaled errors of all observed entries (the mean of
    per-series MASE when every series has the same number of observations). Entries whose
    scaled error is undefined (scale 0, see ``seasonal_error``) are left out,
    as gluonts' masked division does; a series made only of those gets NaN.
    """
    batch = _Batch.of(actual, axis)
    error = np.abs(batch.actual - batch.forecast(point, "point"))
    if (scale is None) == (past is None or season_length is None):
        raise ValueError("mase needs either past and season_length, or scale")
    if scale is None:
        past_array = _float_array(past, "past")
        if past_array.shape[:-1] != batch.leading_shape:
            raise ValueError(
                f"past has leading shape {past_array.shape[:-1]}, expected {batch.leading_shape} (that of actual)"
            )
        scale = seasonal_error(past_array, season_length)
    scale = np.asarray(scale, dtype=float)
    if scale.shape != batch.leading_shape or not np.isfinite(scale).all():
        raise ValueError(f"scale must be finite with shape {batch.leading_shape} (that of actual less time), got {scale.shape}")
    scaled, defined = scaled_errors(error, scale.reshape(-1, 1))
    return batch.result(batch.mean(scaled, batch.observed & defined))


def scaled_errors(error: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MASE's ``error / scale`` and where it is defined.

    numpy.ma (hence gluonts) masks a quotient whose divisor is within `tiny` of 0 relative to
    the dividend, or which is not finite; the same rule keeps the two in step.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scaled = error / scale
    return scaled, (error * np.finfo(float).tiny < scale) & np.isfinite(scaled)


def _quantile_loss(actual: np.ndarray, quantile: np.ndarray, level: float) -> np.ndarray:
    """Twice the pinball loss of the ``level`` quantile, as gluonts scales it."""
    under = actual - quantile
    return 2.0 * np.maximum(level * under, (level - 1.0) * under)


def wql(
    actual: ArrayLike,
    quantiles: ArrayLike,
    levels: Sequence[float],
    axis: int | None = None,
) -> float | np.ndarray:
    """Weighted quantile loss (gluonts ``MeanWeightedSumQuantileLoss``).

    For each level, the summed quantile loss ``2 * pinball`` divided by the summed
    ``|actual|`` (sums over the observed entries along ``axis``), then the mean
    over levels. ``axis=None`` is thus a ratio of dataset-wide sums, not a mean
    of per-series values. ``quantiles`` is ``[..., len(levels), time]``. A zero
    denominator gives inf (or NaN for 0/0); gluonts does so too except per series
    (``axis=1``), where it reports the unweighted loss instead.
    """
    batch = _Batch.of(actual, axis)
    level_array = _check_levels(levels)
    expected = (*batch.leading_shape, level_array.size, batch.actual.shape[-1])
    forecast = _finite_array(quantiles, "quantiles", expected).reshape(-1, *expected[-2:])
    scale = batch.sum(np.abs(batch.actual))
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = [
            batch.sum(_quantile_loss(batch.actual, forecast[:, i], level)) / scale
            for i, level in enumerate(level_array)
        ]
    return batch.result(np.mean(weighted, axis=0))


def coverage(actual: ArrayLike, quantile: ArrayLike, axis: int | None = None) -> float | np.ndarray:
    """Fraction of observed ``actual`` values at or below the ``quantile`` forecast (gluonts ``Coverage(q)``)."""
    batch = _Batch.of(actual, axis)
    below = batch.actual <= batch.forecast(quantile, "quantile")
    return batch.result(batch.mean(below.astype(float)))


def interval_coverage(
    actual: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    axis: int | None = None,
) -> float | np.ndarray:
    """Fraction of observed ``actual`` values inside the closed interval ``[lower, upper]``.

    Equals gluonts' ``Coverage(q_upper) - Coverage(q_lower)`` plus the fraction of
    values equal to ``lower`` (so exactly the difference for continuous data).
    """
    batch = _Batch.of(actual, axis)
    low = batch.forecast(lower, "lower")
    high = batch.forecast(upper, "upper")
    if (low > high).any():
        raise ValueError("lower must not exceed upper")
    inside = (low <= batch.actual) & (batch.actual <= high)
    return batch.result(batch.mean(inside.astype(float)))
