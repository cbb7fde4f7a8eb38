"""How fast this machine reads float32 weights: the floor under a live stream's cached step.

A stream's step for a few rows reads every weight once and computes little, so it cannot
beat the time to read 4 bytes per parameter. This prints that rate two ways: a plain sum over
a tensor the size of Toto 1.0's weights, and ``F.linear`` of 1 to 16 rows through
transformer-shaped matrices (what the step's projections do). See docs/PERFORMANCE.md.

    python scripts/bandwidth_floor.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

PARAMETERS = 151_000_000  # Toto-Open-Base-1.0


def best_seconds(work, repeats: int = 5) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    weights = torch.randn(PARAMETERS)
    seconds = best_seconds(lambda: weights.sum())
    print(f"sum over {weights.nbytes / 1e6:,.0f} MB: {seconds * 1e3:.1f} ms, {weights.nbytes / seconds / 1e9:.1f} GB/s")
    del weights
    # 48 up and 48 down projections of 768 x 3072: 906 MB, more than any cache holds.
    matrices = [torch.randn(3072, 768) for _ in range(48)] + [torch.randn(768, 3072) for _ in range(48)]
    total = sum(m.nbytes for m in matrices)
    for rows in (1, 2, 4, 8, 16):
        inputs = {768: torch.randn(rows, 768), 3072: torch.randn(rows, 3072)}

        def project() -> None:
            for matrix in matrices:
                F.linear(inputs[matrix.shape[1]], matrix)

        seconds = best_seconds(project)
        print(f"F.linear, {rows:2d} rows through {total / 1e6:,.0f} MB: {seconds * 1e3:.1f} ms, {total / seconds / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
