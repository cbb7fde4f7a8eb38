"""Upstream's learning-rate schedule: linear warmup from ``min_lr``, a stable phase at the base
rate, then a 1 - sqrt decay back to ``min_lr``, as a factor for ``torch.optim.lr_scheduler.LambdaLR``."""

from __future__ import annotations

import math
from typing import Callable

from ..arguments import check_int


def warmup_stable_decay(
    base_lr: float, min_lr: float, warmup_steps: int, stable_steps: int, decay_steps: int
) -> Callable[[int], float]:
    """The factor of ``base_lr`` after ``step`` optimizer steps, for ``LambdaLR(optimizer, factor)``.

    Step ``s``'s rate is upstream's ``WarmupStableDecayLR`` at its step ``s + 1`` (its first
    rate is already one warmup step in): ``min_lr + f * (base_lr - min_lr)`` with ``f``
    rising linearly over the warmup, 1 while stable, ``1 - sqrt(progress)`` in the decay,
    and ``min_lr`` after it.
    """
    for name, steps in (("warmup_steps", warmup_steps), ("stable_steps", stable_steps), ("decay_steps", decay_steps)):
        check_int(name, steps, minimum=0)
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f"learning rate must be finite and positive, got {base_lr!r}")
    if not (math.isfinite(min_lr) and 0 <= min_lr <= base_lr):
        raise ValueError(f"min_lr must be finite, in [0, learning rate {base_lr!r}], got {min_lr!r}")

    def factor(step: int) -> float:
        step += 1
        if step < warmup_steps:
            share = step / warmup_steps
        elif step < warmup_steps + stable_steps:
            share = 1.0
        elif step < warmup_steps + stable_steps + decay_steps:
            share = 1 - math.sqrt((step - warmup_steps - stable_steps) / decay_steps)
        else:
            share = 0.0
        return (min_lr + share * (base_lr - min_lr)) / base_lr

    return factor
