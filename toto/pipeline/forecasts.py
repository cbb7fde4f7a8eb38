"""``TotoForecast``: one series' forecast as the pipeline returns it (numpy, Chronos' layout)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class TotoForecast:
    """One series' forecast. ``samples`` is ``(1, variates, prediction_length, num_samples)``."""

    samples: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        """``(1, variates, prediction_length)``."""
        return self.samples.mean(axis=-1)

    def quantile(self, q: float | Sequence[float]) -> np.ndarray:
        """Quantile(s) over samples; a sequence of levels adds a leading dimension."""
        return np.quantile(self.samples, q, axis=-1)

    def numpy(self) -> np.ndarray:
        """Chronos layout: ``(num_samples, prediction_length)``, or ``(variates, num_samples, prediction_length)``."""
        per_variate = np.swapaxes(self.samples[0], -1, -2)
        return per_variate[0] if per_variate.shape[0] == 1 else per_variate


def interpolate_knots(values: np.ndarray, knots: Sequence[float], levels: Sequence[float]) -> np.ndarray:
    """Quantiles at ``levels`` from ``values`` (last axis) at the increasing ``knots``: linear
    between knots, the outermost knot's value beyond them. Returns the levels on the last axis."""
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    if levels.size == 0 or not np.all((levels >= 0) & (levels <= 1)):  # also rejects NaN
        raise ValueError(f"quantile levels must lie in [0, 1], got {levels.tolist()}")
    knots = np.asarray(knots, dtype=np.float64)
    position = np.interp(levels, knots, np.arange(len(knots)))  # fractional knot index, clamped at the ends
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, len(knots) - 1)
    weight = (position - lower).astype(values.dtype)
    return values[..., lower] + weight * (values[..., upper] - values[..., lower])


@dataclass(frozen=True)
class QuantileForecast:
    """One series' forecast from a quantile model (Toto 2.0): ``quantiles`` is
    ``(1, variates, prediction_length, len(levels))`` at the model's knots ``levels``.

    It has no samples (:attr:`samples` is None). :attr:`mean` is the median, the model's
    point forecast; :meth:`quantile` interpolates linearly between knots and holds the
    outermost knot beyond them (the model says nothing about tails past 0.1 and 0.9).
    """

    quantiles: np.ndarray
    levels: tuple[float, ...]

    samples = None

    @property
    def mean(self) -> np.ndarray:
        """``(1, variates, prediction_length)``: the median (a quantile model has no mean)."""
        return self.quantile(0.5)

    def quantile(self, q: float | Sequence[float]) -> np.ndarray:
        """Quantile(s) between the knots; a sequence of levels adds a leading dimension."""
        values = interpolate_knots(self.quantiles, self.levels, np.atleast_1d(q))
        return values[..., 0] if np.ndim(q) == 0 else np.moveaxis(values, -1, 0)

    def numpy(self) -> np.ndarray:
        """The knots where :class:`TotoForecast` has samples: ``(levels, prediction_length)``, or
        ``(variates, levels, prediction_length)``."""
        per_variate = np.swapaxes(self.quantiles[0], -1, -2)
        return per_variate[0] if per_variate.shape[0] == 1 else per_variate
