"""Approximate anomaly scores of a quantile model (Toto 2.0), from its knots: teacher-forced
like :mod:`toto.inference.likelihood`, but with no density.

The CDF is linear between the knots (0.1 ... 0.9) and has exponential tails beyond the
outermost ones, fitted to the outermost pair (a Laplace-like tail whose probability halves
over the gap between the 0.8 and 0.9 knots, say). It is an assumption of ours: the model says
nothing about probabilities below 0.1 or above 0.9, so tail probabilities past the knots are
approximate, and so are the flags at small false-alarm rates.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from ..toto2.config import QUANTILE_LEVELS
from ..toto2.decoding import knots_of
from ..toto2.model import Toto2Model
from .likelihood import teacher_forced_inputs, two_sided


class QuantileStepPredictions(NamedTuple):
    knots: Float[Tensor, "batch variate time knot"]  # each step's quantiles, increasing
    levels: tuple[float, ...]
    values: Float[Tensor, "batch variate time"]
    scored: Bool[Tensor, "batch variate time"]

    def nll(self) -> Tensor:
        """A quantile model has no density: NaN everywhere."""
        return torch.full_like(self.values, torch.nan)

    def tail_probability(self) -> Float[Tensor, "batch variate time"]:
        """Two-sided ``2 min(F(x), 1 - F(x))`` under :func:`knot_cdf`; NaN where not scored."""
        return two_sided(knot_cdf(self.knots.double(), self.levels, self.values.double()), self.scored)


def knot_cdf(knots: Tensor, levels: Sequence[float], x: Tensor) -> Tensor:
    """The CDF at ``x`` of the distribution whose quantiles at ``levels`` are ``knots`` (last
    axis): linear between knots, exponential beyond the outermost two on each side."""
    level = torch.tensor(levels, dtype=knots.dtype, device=knots.device)
    below = (knots <= x[..., None]).sum(-1)  # knots at or below x: 0 .. K
    inner = below.clamp(1, len(levels) - 1)  # the segment [inner - 1, inner]
    low_q, high_q = knots.gather(-1, (inner - 1)[..., None])[..., 0], knots.gather(-1, inner[..., None])[..., 0]
    low_p, high_p = level[inner - 1], level[inner]
    width = (high_q - low_q).clamp_min(torch.finfo(knots.dtype).tiny)
    linear = low_p + (high_p - low_p) * ((x - low_q) / width).clamp(0, 1)
    # Tails: the probability beyond the outer knot decays by the ratio of the outer two levels' tails.
    lower_rate = math.log(levels[1] / levels[0]) / (knots[..., 1] - knots[..., 0]).clamp_min(1e-300)
    upper_rate = math.log((1 - levels[-2]) / (1 - levels[-1])) / (knots[..., -1] - knots[..., -2]).clamp_min(1e-300)
    lower_tail = levels[0] * torch.exp(-lower_rate * (knots[..., 0] - x).clamp_min(0))
    upper_tail = 1 - (1 - levels[-1]) * torch.exp(-upper_rate * (x - knots[..., -1]).clamp_min(0))
    return torch.where(x < knots[..., 0], lower_tail, torch.where(x > knots[..., -1], upper_tail, linear))


@torch.no_grad()
def quantile_step_predictions(
    model: Toto2Model, series: Float[Tensor, "batch variate time"], observed: Bool[Tensor, "batch variate time"]
) -> QuantileStepPredictions:
    """Each step's knots, predicted from the patches before its own, in one teacher-forced pass
    (left-padded to whole patches as a forecast pads its context): the token of patch ``k``
    forecasts patch ``k + 1``, un-scaled with patch ``k``'s statistics, as the first block of a
    forecast from patch ``k`` would be."""
    patch = model.patch_size
    values, mask, scored, left = teacher_forced_inputs(series, observed, patch)
    quantiles, loc, scale = model(values, mask)  # [quantile, batch, variate, patch, steps]; loc [batch, variate, patch]
    head = rearrange(quantiles[..., :patch].float(), "quantile ... patch step -> ... patch step quantile")
    knots = knots_of(head, loc, scale).flatten(-3, -2)  # [batch, variate, time, quantile]
    knots = F.pad(knots[..., :-patch, :], (0, 0, patch, 0), value=0.0)  # patch k's forecast belongs to patch k + 1
    return QuantileStepPredictions(knots[..., left:, :], QUANTILE_LEVELS, values[..., left:].float(), scored[..., left:])
