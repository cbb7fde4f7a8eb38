"""Throughput of the Ray engine against the local one on S4's workload, and the cost of per-item seeding.

    python scripts/ray_throughput.py [--config full|tiny] [--series 256] [--workers 1,2] [--json out.json]

* Ray: ``toto.engines.ray.forecast_dataset`` on a local cluster of this machine's CPUs, for
  each worker count. A job pays a fixed cost (worker processes, model loads, planning) on
  top of its batches, so each count runs twice, on one batch and on all series: the
  difference gives the steady rate (series/s) and, against the local engine's time per
  batch, Ray's overhead per batch.
* Seeding: ``TotoPipeline.predict`` with batch-level seeding (``seed``) against per-series
  streams (``sample_keys``), on S4 (one patch: a single draw) and on a long horizon that
  decodes patch by patch.

Random weights in the published layout (the hub is not reachable here); speed does not
depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from toto import TotoPipeline
from toto.commands.bench import S4Settings, s4_workload
from toto.config import PUBLISHED_CONFIG
from toto.inference.keyed_random import series_keys
from toto.checkpoints.random_weights import write_checkpoint

TINY = {**PUBLISHED_CONFIG, "patch_size": 16, "stride": 16, "embed_dim": 32, "num_layers": 4, "num_heads": 4,
        "mlp_hidden_dim": 64, "spacewise_every_n_layers": 2, "output_distribution_kwargs": {"k_components": 5}}  # fmt: skip


def long_frame(series: list[np.ndarray]):
    import pandas as pd

    return pd.concat(
        [pd.DataFrame({"item_id": f"s{i:04d}", "timestamp": pd.date_range("2024-01-01", periods=len(values), freq="h"),
                       "target": values}) for i, values in enumerate(series)],  # fmt: skip
        ignore_index=True,
    )


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--series", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--skip-seeding", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import ray

    from toto.engines.ray import forecast_dataset

    settings = S4Settings(series=args.series)
    frame = long_frame(s4_workload(settings))
    batches = -(-args.series // args.batch_size)
    options = dict(prediction_length=settings.horizon, num_samples=settings.num_samples, batch_size=args.batch_size, seed=0)
    report = {"machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}", "config": args.config,
              "workload": settings.describe(), "batch_size": args.batch_size}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "model", PUBLISHED_CONFIG if args.config == "full" else TINY)
        pipeline = TotoPipeline.from_pretrained(str(checkpoint), device_map="cpu", torch_compile=True)
        pipeline.predict_df(frame, **options)  # warm: compiled graphs, buffers
        local = timed(lambda: pipeline.predict_df(frame, **options))
        report["local"] = {"seconds": local, "series_per_s": args.series / local, "seconds_per_batch": local / batches}
        print(f"local engine: {local:.2f} s, {args.series / local:.2f} series/s", file=sys.stderr, flush=True)

        if not args.skip_seeding:
            report["seeding"] = seeding_cost(pipeline, settings)
        del pipeline

        # One logical CPU more than the cores: the reading and planning tasks need one that the
        # workers do not hold (else Ray waits forever); they are light next to the model.
        cores = os.cpu_count()
        ray.init(num_cpus=cores + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        first = frame[frame.item_id.isin([f"s{i:04d}" for i in range(args.batch_size)])]
        report["ray"] = {}
        for workers in (int(w) for w in args.workers.split(",")):
            run = dict(model=checkpoint, concurrency=workers, num_cpus_per_worker=max(1, cores // workers), **options)
            one = timed(lambda: forecast_dataset(ray.data.from_pandas(first), **run).materialize())
            whole = timed(lambda: forecast_dataset(ray.data.from_pandas(frame), **run).materialize())
            steady = (args.series - args.batch_size) / (whole - one)
            per_batch = (whole - one) / (batches - 1) * workers  # one worker's time per batch
            report["ray"][workers] = {
                "job_seconds": whole, "job_series_per_s": args.series / whole, "one_batch_job_seconds": one,
                "steady_series_per_s": steady, "worker_seconds_per_batch": per_batch,
                "overhead_per_batch_s": per_batch - local / batches,
            }  # fmt: skip
            print(f"ray, {workers} worker(s): job {whole:.1f} s ({args.series / whole:.2f} series/s), one-batch job "
                  f"{one:.1f} s, steady {steady:.2f} series/s", file=sys.stderr, flush=True)  # fmt: skip
        ray.shutdown()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


def seeding_cost(pipeline: TotoPipeline, settings: S4Settings) -> dict:
    """Seconds of ``predict`` with batch-level seeding and with per-series streams (best of 3)."""
    cases = {
        "S4 (horizon 64, one patch)": ([torch.from_numpy(s) for s in s4_workload(settings)], settings.horizon, 128, 128, 16),
        "1 series, horizon 336 (6 patches), 256 samples": ([torch.from_numpy(s4_workload(settings)[0])], 336, 256, 256, None),
    }
    result = {}
    for name, (context, horizon, samples, per_batch, batch_size) in cases.items():
        keys = series_keys(0, [(i,) for i in range(len(context))])
        seconds = {}
        for mode, extra in (("batch_seed", {"seed": 0}), ("per_series_streams", {"sample_keys": keys})):
            run = lambda: pipeline.predict(context, horizon, samples, per_batch, batch_size=batch_size, **extra)  # noqa: E731
            run()
            seconds[mode] = min(timed(run) for _ in range(3))
        seconds["ratio"] = seconds["per_series_streams"] / seconds["batch_seed"]
        result[name] = seconds
        print(f"seeding, {name}: {seconds}", file=sys.stderr, flush=True)
    return result


if __name__ == "__main__":
    main()
