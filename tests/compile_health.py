"""Compile health in steady state for tests: what repeating a warm set of calls compiles, recompiles or breaks."""

from __future__ import annotations

from typing import Callable, Iterable

from toto.compile.diagnostics import CompileStats
from toto.compile.health import steady_state as health


def steady_state(calls: Iterable[Callable[[], object]]) -> CompileStats:
    """Run ``calls`` once to warm up, then again under ``fail_on_recompile`` (a recompile raises); the second round's counters."""
    return health(list(calls)).steady
