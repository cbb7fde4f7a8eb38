"""Forecast a synthetic series with Toto and print the forecast's quantiles.

    python scripts/quickstart.py                     # Datadog/Toto-Open-Base-1.0 from the hub
    python scripts/quickstart.py --model DIR         # a local checkpoint folder
    python scripts/quickstart.py --random-weights    # offline: published architecture, random weights
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from toto import MaskedTimeseries, Toto, TotoConfig, TotoForecaster
from toto.config import PUBLISHED_CONFIG
from toto.checkpoints.reading import DEFAULT_MODEL_ID


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="hub id or local checkpoint folder")
    parser.add_argument("--random-weights", action="store_true", help="skip loading; use random weights")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()

    if args.random_weights:
        print("Using the published architecture with RANDOM weights: the numbers below show the")
        print("pipeline works, not forecast quality. Drop --random-weights to load real weights.")
        torch.manual_seed(0)
        model = Toto(TotoConfig.from_dict(PUBLISHED_CONFIG)).eval()
    else:
        model = Toto.from_pretrained(args.model)

    t = torch.arange(args.context, dtype=torch.float32)
    series = 10 + 3 * torch.sin(2 * math.pi * t / 96) + 0.3 * torch.randn(args.context)
    inputs = MaskedTimeseries(
        series=series[None],
        padding_mask=torch.ones(1, args.context, dtype=torch.bool),
        id_mask=torch.zeros(1, args.context, dtype=torch.int),
        timestamp_seconds=torch.zeros(1, args.context, dtype=torch.int),
        time_interval_seconds=torch.full((1,), 900, dtype=torch.int),
    )
    start = time.perf_counter()
    forecast = TotoForecaster(model.model).forecast(
        inputs, prediction_length=args.horizon, num_samples=args.samples, samples_per_batch=args.samples
    )
    elapsed = time.perf_counter() - start
    q10, q50, q90 = forecast.quantile(torch.tensor([0.1, 0.5, 0.9]))[:, 0, 0]
    print(f"forecast of {args.horizon} steps from {args.context} with {args.samples} samples in {elapsed:.2f} s")
    print(" step      q10      q50      q90")
    for step in range(0, args.horizon, max(1, args.horizon // 8)):
        print(f"{step:5d} {q10[step]:8.3f} {q50[step]:8.3f} {q90[step]:8.3f}")


if __name__ == "__main__":
    main()
