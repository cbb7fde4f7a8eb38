"""Compile-health counters, read from ``torch._dynamo``'s own bookkeeping.

Used by tests (deterministic counts), benchmarks and the ``check`` command.
Take a :func:`snapshot` before and after the work and subtract.

:func:`count_eager_ops` is the CPU-measurable stand-in for GPU kernel launches:
the ATen ops dispatched *outside* compiled graphs while a block runs.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Iterator

from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes


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


def compiled_graph_count() -> int:
    """Graphs handed to a backend since start-up (or ``torch._dynamo.reset()``): one dict read."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def snapshot() -> CompileStats:
    """Totals since the process started, or since ``torch._dynamo.reset()`` (which clears them)."""
    from torch._dynamo.convert_frame import FRAME_COMPILE_COUNTER
    from torch._dynamo.utils import counters

    # Compilations per frame; every one after a frame's first is a recompile.
    recompiles = sum(max(0, count - 1) for count in FRAME_COMPILE_COUNTER.values())
    return CompileStats(
        graph_breaks=sum(counters["graph_break"].values()),
        graphs=compiled_graph_count(),
        recompiles=recompiles,
        cudagraph_skips=counters["inductor"]["cudagraph_skips"],
    )


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def count_eager_ops() -> Iterator[Counter[str]]:
    """Count the ATen ops dispatched outside compiled graphs while the block runs, by op name.

    Calls that go through a compiled :class:`~toto.compile.CompiledFunction` run with the
    counter switched off (their graph is one replay, however many ops it fuses); a
    function that runs eagerly, compiled or not, is counted op by op.
    """
    from .policy import CompiledFunction

    plain_call = CompiledFunction._call_compiled

    def uncounted(self, *args, **kwargs):
        with _disable_current_modes():  # also keeps dynamo's guards seeing the usual dispatch state
            return plain_call(self, *args, **kwargs)

    counter = _OpCounter()
    CompiledFunction._call_compiled = uncounted
    try:
        with counter:
            yield counter.ops
    finally:
        CompiledFunction._call_compiled = plain_call
