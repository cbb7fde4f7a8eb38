"""The fine-tuning loss and learning-rate schedule against upstream's (``toto_upstream.model.losses``,
``toto_upstream.model.scheduler``)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from oracle import import_oracle

from toto.model.distribution import AffineTransformed, MixtureOfStudentT
from toto.training import combined_loss, robust_loss, warmup_stable_decay


def errors() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(200, generator=gen) * 3, torch.tensor([0.0, 1e-6, -1e3, 50.0])])


@pytest.mark.parametrize("alpha", [2.0, 0.0, -math.inf, 1.0, -2.0, 0.5, 1.9])
@pytest.mark.parametrize("delta", [0.1, 1.0])
def test_robust_loss_equals_upstream(alpha, delta):
    losses = import_oracle("model.losses")
    error = errors().double()
    # Upstream's takes a distribution and a target and scores mean - target.
    theirs = losses.GeneralRobustLoss(delta=delta, alpha=alpha)(SimpleNamespace(mean=error), torch.zeros_like(error))
    torch.testing.assert_close(robust_loss(error, delta, alpha), theirs, rtol=1e-12, atol=1e-15)


def test_combined_loss_equals_upstream_on_a_mixture():
    losses = import_oracle("model.losses")
    gen = torch.Generator().manual_seed(1)
    shape = (3, 2, 16, 5)  # batch, variate, time, components
    mixture = MixtureOfStudentT(
        2 + torch.rand(shape, generator=gen) * 10, torch.randn(shape, generator=gen),
        0.1 + torch.rand(shape, generator=gen), torch.randn(shape, generator=gen),
    )  # fmt: skip
    distribution = AffineTransformed(mixture, torch.randn(3, 2, 1, generator=gen), 1 + torch.rand(3, 2, 1, generator=gen))
    target = torch.randn(3, 2, 16, generator=gen) * 2
    ours = combined_loss(distribution, target)
    assert ours.shape == target.shape  # per element: the caller masks and reduces
    torch.testing.assert_close(ours, losses.CombinedLoss()(distribution, target), rtol=1e-6, atol=1e-6)
    # The weights are upstream's pretraining ones: another blend differs.
    assert not torch.allclose(ours, combined_loss(distribution, target, nll_weight=0.5))


@pytest.mark.parametrize("phases", [(5, 7, 6), (0, 3, 4), (4, 0, 4), (3, 3, 0), (1, 1, 1)])
def test_schedule_equals_upstream(phases):
    scheduler = import_oracle("model.scheduler")
    warmup, stable, decay = phases
    base, low = 1e-4, 1e-5

    def rates(make):
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([parameter], lr=base)
        schedule = make(optimizer)
        seen = []
        for _ in range(warmup + stable + decay + 4):  # past the end: min_lr
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return seen

    ours = rates(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, warmup_stable_decay(base, low, *phases)))
    theirs = rates(lambda opt: scheduler.WarmupStableDecayLR(opt, *phases, min_lr=low, base_lr=base))
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours[-1] == pytest.approx(low)


def test_bad_loss_and_schedule_arguments_are_named():
    with pytest.raises(ValueError, match="alpha must be at most 2"):
        robust_loss(errors(), alpha=2.5)
    with pytest.raises(ValueError, match="delta must be positive"):
        robust_loss(errors(), delta=0.0)
    with pytest.raises(ValueError, match="warmup_steps must be an integer >= 0"):
        warmup_stable_decay(1e-4, 1e-5, -1, 1, 1)
    with pytest.raises(ValueError, match="learning rate must be finite"):
        warmup_stable_decay(float("nan"), 1e-5, 1, 1, 1)
    with pytest.raises(ValueError, match="min_lr"):
        warmup_stable_decay(1e-4, 1e-3, 1, 1, 1)
