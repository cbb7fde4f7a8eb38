"""Exact per-step likelihoods of observed series under Toto 1.0, from one teacher-forced pass.

Every patch after the first is predicted from everything before it, as upstream's training
step (``_train_or_val_step``) predicts it: the backbone runs on the series less its last
patch, and the Student-T mixture at each step is the prediction of the step one patch
later, in the space scaled by the causal ``loc`` and ``scale + eps`` of the patch it is
predicted from. Densities return to the data's units by the change of variables, minus
``log(scale + eps)``. The first patch, and every missing step, has none: NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from ..data.util.dataset import padded_length
from ..model.backbone import TotoBackbone
from ..model.distribution import MixtureOfStudentT

EPS = torch.finfo(torch.float32).eps  # upstream's training step divides by scale + eps of its float32 series
MONITORING_EXTRA = 'pip install "toto-compiled[monitoring]"'


class StepPredictions(NamedTuple):
    """Each step's predictive mixture (scaled space) and the affine map back to the data, with
    the values it predicts; steps with no prediction are marked in ``scored``."""

    mixture: MixtureOfStudentT  # batch shape [batch, variate, time]
    loc: Float[Tensor, "batch variate time"]
    scale: Float[Tensor, "batch variate time"]  # scale + eps: what the values are divided by
    values: Float[Tensor, "batch variate time"]
    scored: Bool[Tensor, "batch variate time"]  # observed, and after the first patch

    def scaled(self) -> Tensor:
        return (self.values - self.loc) / self.scale

    def nll(self) -> Float[Tensor, "batch variate time"]:
        return -self.log_density()

    def log_density(self) -> Float[Tensor, "batch variate time"]:
        """log p(value) in the data's units; NaN where not scored."""
        density = self.mixture.log_prob(self.scaled()) - torch.log(self.scale)
        return torch.where(self.scored, density, torch.nan)

    def tail_probability(self) -> Float[Tensor, "batch variate time"]:
        """Two-sided ``2 min(F(x), 1 - F(x))`` of each value under its predictive mixture (CDF F);
        NaN where not scored. Needs scipy (extra ``toto-compiled[monitoring]``)."""
        return two_sided(mixture_cdf(self.mixture, self.scaled()), self.scored)


class StepScores(NamedTuple):
    """Scores of observed steps under the predictions made before they arrived, each
    ``[batch, variate, steps]`` (NaN where missing): negative log density (data units) and
    the two-sided tail probability (see :meth:`StepPredictions.tail_probability`)."""

    nll: Tensor
    tail_probability: Tensor

    def anomaly(self, false_alarm_rate: float) -> Tensor:
        """Where the tail probability is below ``false_alarm_rate`` (never where missing)."""
        return torch.nan_to_num(self.tail_probability, nan=1.0) < false_alarm_rate


@torch.no_grad()
def step_predictions(
    model: TotoBackbone,
    series: Float[Tensor, "batch variate time"],
    observed: Bool[Tensor, "batch variate time"],
) -> StepPredictions:
    """The teacher-forced predictions of every step of ``series`` (missing values already filled,
    ``observed`` False there), left-padded to whole patches as a forecast pads its context."""
    patch = model.patch_size
    length = series.shape[-1]
    values, mask, scored, left = teacher_forced_inputs(series, observed, patch)
    ids = torch.zeros(1, 1, 1, dtype=torch.long, device=series.device)
    out = model(values[..., :-patch], mask[..., :-patch], ids)
    # The model's outputs in float32 at least (a bfloat16 model's mixture already is).
    loc, scale = (F.pad(t.float(), (patch, 0), value=1.0) for t in (out.loc, out.scale))
    mixture = MixtureOfStudentT(
        *(F.pad(t, (0, 0, patch, 0), value=1.0) for t in (out.distribution.df, out.distribution.loc,
                                                          out.distribution.scale, out.distribution.logits))
    )  # fmt: skip
    return StepPredictions(mixture.last_steps(length), loc[..., left:], scale[..., left:] + EPS,
                           values[..., left:].float(), scored[..., left:])  # fmt: skip


def teacher_forced_inputs(
    series: Float[Tensor, "batch variate time"], observed: Bool[Tensor, "batch variate time"], patch: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """``series`` and ``observed`` left-padded to whole patches, as a forecast pads its context;
    the steps that get a score (observed, after the first patch); and the padding's length."""
    left = padded_length(series.shape[-1], patch) - series.shape[-1]
    values, mask = F.pad(series, (left, 0)), F.pad(observed, (left, 0))
    scored = mask.clone()
    scored[..., :patch] = False
    return values, mask, scored, left


def two_sided(cdf: Tensor, scored: Tensor) -> Tensor:
    """The two-sided tail probability ``2 min(F, 1 - F)`` of CDF values; NaN where not ``scored``."""
    return torch.where(scored, (2 * torch.minimum(cdf, 1 - cdf)).clamp(max=1.0), torch.nan)


def mixture_cdf(mixture: MixtureOfStudentT, value: Tensor) -> Tensor:
    """The mixture's CDF at ``value`` (float64), from scipy's Student-T CDF (``scipy.special.stdtr``)."""
    try:
        from scipy.special import stdtr
    except ImportError as err:
        raise ImportError(f"tail probabilities need scipy: {MONITORING_EXTRA}") from err
    z = ((value[..., None] - mixture.loc) / mixture.scale).double().cpu().numpy()
    components = torch.from_numpy(stdtr(mixture.df.double().cpu().numpy(), z)).to(value.device)
    return (mixture.mixture_probs.double() * components).sum(-1)
