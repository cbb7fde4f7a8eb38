"""Time a forecast with the folded output head against the two-step head, interleaved in one process.

Full-size random weights in the published layout, eager, one univariate series. Default:
S2 (context 2,048, horizon 256, 256 samples). Usage:
``python scripts/head_bench.py [--context N] [--horizon N] [--samples N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toto import Toto, TotoForecaster  # noqa: E402
from toto.config import PUBLISHED_CONFIG  # noqa: E402
from toto.data.util.dataset import masked_timeseries  # noqa: E402
from toto.model.backbone import TotoBackbone  # noqa: E402
from toto.checkpoints.random_weights import write_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--horizon", type=int, default=256)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = Toto.load_from_checkpoint(write_checkpoint(Path(folder), PUBLISHED_CONFIG, seed=2)).model
    series = torch.randn(1, 1, args.context, generator=torch.Generator().manual_seed(0)).cumsum(-1)
    inputs = masked_timeseries(series)
    forecaster = TotoForecaster(model, torch_compile=False)
    heads = {"folded": TotoBackbone.fast_head, "two-step": TotoBackbone.head}
    times: dict[str, list[float]] = {name: [] for name in heads}
    try:
        for round_index in range(args.rounds + 1):  # round 0 warms up (and folds the head)
            for name, head in heads.items():
                TotoBackbone.fast_head = head
                start = time.perf_counter()
                forecaster.forecast(inputs, args.horizon, num_samples=args.samples, samples_per_batch=args.samples)
                if round_index:
                    times[name].append(time.perf_counter() - start)
    finally:
        TotoBackbone.fast_head = heads["folded"]
    for name, values in times.items():
        print(f"{name:9s} best {min(values):.3f} s, median {sorted(values)[len(values) // 2]:.3f} s over {len(values)}")


if __name__ == "__main__":
    main()
