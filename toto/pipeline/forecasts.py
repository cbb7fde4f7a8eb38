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
