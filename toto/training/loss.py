"""The fine-tuning loss: upstream's blend of the negative log-likelihood and Barron's robust loss.

Both terms are per element (no reduction): the caller masks padded steps and exogenous
variates, then sums, so sums and counts can be all-reduced across processes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

# Upstream's CombinedLoss defaults, those of Toto's pretraining.
NLL_WEIGHT = 0.575
ROBUST_DELTA = 0.1
ROBUST_ALPHA = 0.0


def robust_loss(error: Tensor, delta: float = ROBUST_DELTA, alpha: float = ROBUST_ALPHA) -> Tensor:
    """Barron's general robust loss ("A General and Adaptive Robust Loss Function", CVPR 2019)
    of ``error`` at scale ``delta`` and shape ``alpha`` (at most 2).

    ``alpha`` 2 is half the squared error, 0 the Cauchy (log) loss, ``-inf`` Welsch's; the
    general form covers the rest (1: pseudo-Huber).
    """
    if not alpha <= 2:  # also rejects NaN
        raise ValueError(f"alpha must be at most 2, got {alpha!r}")
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta!r}")
    half_squared = 0.5 * (error / delta) ** 2
    if alpha == 2:
        return half_squared
    if alpha == 0:
        return torch.log1p(half_squared)
    if alpha == -math.inf:
        return -torch.expm1(-half_squared)
    gap = abs(alpha - 2)
    return gap / alpha * ((2 * half_squared / gap + 1) ** (alpha / 2) - 1)


def combined_loss(
    distribution: Distribution,
    target: Tensor,
    nll_weight: float = NLL_WEIGHT,
    delta: float = ROBUST_DELTA,
    alpha: float = ROBUST_ALPHA,
) -> Tensor:
    """``nll_weight * NLL + (1 - nll_weight) * robust_loss(mean - target)``, per element of ``target``."""
    nll = -distribution.log_prob(target)
    robust = robust_loss(distribution.mean - target, delta, alpha)
    return nll_weight * nll + (1 - nll_weight) * robust
