"""Forecast a synthetic series with TotoPipeline and print the forecast's quantiles.

    python scripts/quickstart.py                     # Datadog/Toto-Open-Base-1.0 from the hub
    python scripts/quickstart.py --model DIR         # a local checkpoint folder
    python scripts/quickstart.py --random-weights    # offline: published architecture, random weights
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from toto import Toto, TotoConfig, TotoPipeline
from toto.checkpoints.reading import DEFAULT_MODEL_ID
from toto.config import PUBLISHED_CONFIG


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="hub id or local checkpoint folder")
    parser.add_argument("--random-weights", action="store_true", help="skip loading; use random weights")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine; use --device cpu")

    if args.random_weights:
        print("Using the published architecture with RANDOM weights: the numbers below show the")
        print("pipeline works, not forecast quality. Drop --random-weights to load real weights.")
        torch.manual_seed(0)
        model = Toto(TotoConfig.from_dict(PUBLISHED_CONFIG)).to(args.device).eval()
        pipeline = TotoPipeline(model)
    else:
        pipeline = TotoPipeline.from_pretrained(args.model, device_map=args.device)

    # A 15-minute metric with a daily cycle (96 steps) and noise.
    rng = np.random.default_rng(0)
    t = np.arange(args.context)
    series = 10 + 3 * np.sin(2 * math.pi * t / 96) + 0.3 * rng.standard_normal(args.context)
    start = time.perf_counter()
    quantiles, _ = pipeline.predict_quantiles(
        series, args.horizon, quantile_levels=(0.1, 0.5, 0.9), num_samples=args.samples,
        samples_per_batch=args.samples, seed=0,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    q = quantiles[0]  # (horizon, 3)
    print(f"forecast of {args.horizon} steps from {args.context} with {args.samples} samples in {elapsed:.2f} s")
    print(" step      q10      q50      q90")
    for step in range(0, args.horizon, max(1, args.horizon // 8)):
        print(f"{step:5d} {q[step, 0]:8.3f} {q[step, 1]:8.3f} {q[step, 2]:8.3f}")


if __name__ == "__main__":
    main()
