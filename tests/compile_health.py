"""Compile health in steady state: what repeating a warm set of calls compiles, recompiles or breaks."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from toto.compile.diagnostics import snapshot


def steady_state(calls: Iterable[Callable[[], object]]):
    """Run ``calls`` once to warm up, then again under ``fail_on_recompile``; the counters' change in the second round."""
    calls = list(calls)
    for call in calls:
        call()
    before = snapshot()
    with torch.compiler.set_stance("fail_on_recompile"):
        for call in calls:
            call()
    return snapshot() - before
