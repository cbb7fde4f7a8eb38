"""Compile health in steady state: the one check that tests, ``toto-compiled check`` and the GPU script share.

Warm up, then repeat calls under ``torch.compiler.set_stance("fail_on_recompile")``;
healthy means no graph breaks, no new graphs or recompiles once warm, and no CUDA-graph
skips. Counters come from :mod:`toto.compile.diagnostics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .diagnostics import CompileStats, snapshot

Call = Callable[[], object]


@dataclass(frozen=True)
class Health:
    warm: CompileStats  # counters during the warm-up
    steady: CompileStats  # counters during the repeats under fail_on_recompile
    error: str = ""  # what the repeats raised (caught only with catch=True): e.g. a recompile

    @property
    def graph_breaks(self) -> int:
        return self.warm.graph_breaks + self.steady.graph_breaks

    @property
    def new_in_steady_state(self) -> int:
        """Graphs compiled and frames recompiled once warm: each one should have been reused."""
        return self.steady.graphs + self.steady.recompiles

    @property
    def cudagraph_skips(self) -> int:
        return self.warm.cudagraph_skips + self.steady.cudagraph_skips

    def problems(self, min_warm_graphs: int = 0) -> list[str]:
        """What is unhealthy, one line each; empty when healthy."""
        found = []
        if self.warm.graphs < min_warm_graphs:
            found.append(f"warm-up compiled {self.warm.graphs} graphs; expected at least {min_warm_graphs}")
        if self.graph_breaks:
            found.append(f"{self.graph_breaks} graph breaks (warm-up {self.warm}, steady state {self.steady})")
        if self.new_in_steady_state or self.error:
            found.append(f"steady state not clean (want all 0): {self.steady}" + (f"; {self.error}" if self.error else ""))
        if self.cudagraph_skips:
            found.append(f"{self.cudagraph_skips} CUDA-graph skips (warm-up {self.warm}, steady state {self.steady})")
        return found


def steady_state(
    calls: Sequence[Call],
    *,
    warmup: Sequence[Call] | None = None,
    warmup_rounds: int = 1,
    rounds: int = 1,
    catch: bool = False,
) -> Health:
    """Run ``warmup`` (default: ``calls``) ``warmup_rounds`` times, then ``calls`` ``rounds`` times
    under ``fail_on_recompile``; the counters of each phase.

    A recompile in the repeats raises (dynamo's ``RuntimeError``); with ``catch=True`` any
    exception there is returned as ``error`` (its first line) instead, for reports that go on.
    Under ``reduce-overhead`` two warm-up rounds are needed: CUDA graphs are recorded on the second.
    """
    calls = list(calls)
    warmup = calls if warmup is None else list(warmup)
    before = snapshot()
    for _ in range(warmup_rounds):
        for call in warmup:
            call()
    warm = snapshot() - before
    error = ""
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            for _ in range(rounds):
                for call in calls:
                    call()
    except Exception as err:  # noqa: BLE001 - re-raised unless the caller reports it
        if not catch:
            raise
        error = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
    return Health(warm, snapshot() - before - warm, error)
