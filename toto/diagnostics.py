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
    """Totals since the process started (or since ``torch._dynamo.reset``/counters were cleared)."""
    from torch._dynamo.utils import counters, get_compilation_metrics

    recompiles = 0
    for metrics in get_compilation_metrics():  # a bounded log (the most recent compilations)
        compile_id = str(metrics.compile_id or "")
        if "/" in compile_id and int(compile_id.split("/")[1].split("_")[0]) > 0:
            recompiles += 1
    return CompileStats(
        graph_breaks=sum(counters["graph_break"].values()),
        graphs=counters["stats"]["unique_graphs"],
        recompiles=recompiles,
        cudagraph_skips=counters["inductor"]["cudagraph_skips"],
    )
