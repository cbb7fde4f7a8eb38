"""Compile-health counters, read from ``torch._dynamo``'s own bookkeeping.

Used by tests (deterministic counts), benchmarks and the ``check`` command.
Take a :func:`snapshot` before and after the work and subtract.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class CompileStats:
    graph_breaks: int = 0  # dynamo graph breaks (each a hole in a compiled region)
    graphs: int = 0  # distinct FX graphs handed to a backend
    recompiles: int = 0  # compilations of a frame that already had a compiled entry
    cudagraph_skips: int = 0  # graphs inductor declined to run as CUDA graphs

    def __sub__(self, other: "CompileStats") -> "CompileStats":
        return CompileStats(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def snapshot() -> CompileStats:
    """Totals since the process started, or since ``torch._dynamo.reset()`` (which clears them)."""
    from torch._dynamo.convert_frame import FRAME_COMPILE_COUNTER
    from torch._dynamo.utils import counters

    # Compilations per frame; every one after a frame's first is a recompile.
    recompiles = sum(max(0, count - 1) for count in FRAME_COMPILE_COUNTER.values())
    return CompileStats(
        graph_breaks=sum(counters["graph_break"].values()),
        graphs=counters["stats"]["unique_graphs"],
        recompiles=recompiles,
        cudagraph_skips=counters["inductor"]["cudagraph_skips"],
    )
