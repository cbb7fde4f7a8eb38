"""The benchmark's names and settings: scenarios, runners, dtypes, table columns, S4's workload.

Imports neither torch nor numpy at module level: the parser reads these to build ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SCENARIOS = {
    "S1": {"context": 512, "horizon": 8, "num_samples": 1024},
    "S2": {"context": 2048, "horizon": 256, "num_samples": 256},
    "S3": {"context": 4096, "horizon": 512, "num_samples": None},
}
BATCHED = "S4"  # many series per call: measured by run_s4, reported in series per second
SCENARIO_NAMES = (*SCENARIOS, BATCHED)
RUNNERS = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled", "ours-compiled-prefill")
# upstream-compiled is left out of S4: every batch has its own padded length, so a compiled
# upstream recompiles through the timed calls; AutoGluon's wrapper runs upstream eagerly.
S4_RUNNERS = ("upstream-eager", "ours-eager", "ours-compiled", "ours-compiled-prefill")
DTYPE_NAMES = ("float32", "bfloat16")  # torch dtypes of the same names
INTERRUPTED = "interrupted"
UPSTREAM_DTYPE = "float32"  # upstream's forecaster is not meant for half precision: its baseline stays float32
COLUMNS = (
    "scenario", "runner", "dtype", "first call s", "later call s", "compile s", "peak MiB",
    "speed-up", "graphs", "graph breaks", "recompiles", "cudagraph skips",
)  # fmt: skip
S4_COLUMNS = (
    "scenario", "runner", "dtype", "batch size", "samples/batch", "warm-up s", "later call s", "series/s",
    "peak MiB", "speed-up", "graphs", "graphs after warm-up", "graph breaks", "recompiles", "cudagraph skips",
)  # fmt: skip


@dataclass(frozen=True)
class S4Settings:
    """S4's workload, ours' batching (tuned for CPU throughput) and the AutoGluon-style baseline's."""

    series: int = 256
    min_context: int = 300
    max_context: int = 3000
    horizon: int = 64
    num_samples: int = 128
    seed: int = 0
    # Ours, tuned on the 2-core CPU (docs/PERFORMANCE.md, S4): 16 and 32 series per batch were within
    # the noise of each other, 64 and 128 slower (more padding per batch). samples_per_batch changes
    # nothing while the horizon fits one patch (all draws come from the prefill's distribution).
    batch_size: int = 16
    samples_per_batch: int = 128
    baseline_batch_size: int = 16  # AutoGluon's default batch_size
    baseline_samples_per_batch: int = 32  # what AutoGluon's TotoModel passes to forecast
    interval_seconds: int = 3600  # AutoGluon's default frequency, hourly

    def lengths(self) -> np.ndarray:
        """Context lengths, uniform in ``[min(min_context, max_context), max_context]``.

        The first N are the same whatever ``series`` is (numpy draws them in order).
        """
        import numpy as np

        low = min(self.min_context, self.max_context)
        return np.random.default_rng(self.seed).integers(low, self.max_context, size=self.series, endpoint=True)

    def describe(self) -> str:
        lengths = self.lengths()
        low = min(self.min_context, self.max_context)
        drawn = f"{low:,}-{self.max_context:,}" if low < self.max_context else f"{low:,}"
        return (
            f"{self.series:,} univariate series, context {int(lengths.min()):,}-{int(lengths.max()):,} steps "
            f"(drawn from {drawn}, seed {self.seed}; mean {lengths.mean():,.0f}, {int(lengths.sum()):,} points), "
            f"horizon {self.horizon}, {self.num_samples} samples"
        )
