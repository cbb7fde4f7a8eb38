"""``bench --streams``: a live stream's update (append one patch, forecast one patch, mean)
against a fresh forecast of the same context, and the throughput of many streams.

Full-size random weights in the published layout (or ``--config``'s architecture), ours
compiled as the device's default says. For each context length C, every round opens a stream on the first C - patch steps
(not timed), then times ``append`` of the last patch plus ``forecast``; the fresh call
forecasts the whole C steps. Rounds interleave the two; the first round compiles.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common import sync


def run_streams(args: Any, config: dict) -> dict[str, Any]:
    """``config``: the architecture (random weights), the published one unless --config names another."""
    from ...checkpoints.random_weights import write_checkpoint
    from ...pipeline import TotoPipeline

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder), config)
        pipeline = TotoPipeline.from_pretrained(str(checkpoint), device_map=device, torch_dtype=dtype, torch_compile=True)
    patch = pipeline.family.patch_size
    forecaster = pipeline.family.forecaster
    rng = np.random.default_rng(0)
    rows = []
    for batch in args.stream_rows:
        for context in args.stream_contexts:
            rows.append(_update_against_fresh(pipeline, forecaster, args, batch, context, rng))
    throughput = _throughput(pipeline, args, patch, rng)
    return {"device": str(device), "dtype": args.dtype, "patch_size": patch, "rows": rows, "throughput": throughput}


def _update_against_fresh(pipeline: Any, forecaster: Any, args: Any, batch: int, context: int,
                          rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    from ...data.util.dataset import masked_timeseries

    patch = forecaster.patch_size
    steps = np.arange(context)
    series = (50 + 10 * np.sin(steps / 9 + rng.uniform(0, 6, (batch, 1))) + rng.normal(0, 1, (batch, context)))
    series = series.astype(np.float32)[:, None]
    whole = masked_timeseries(torch.from_numpy(series))
    fresh_times, stream_times, worst = [], [], 0.0
    for _ in range(args.repeats + 1):
        started = time.perf_counter()
        fresh = forecaster.forecast(whole, patch, hide_leading_padding=True).mean
        sync(args.device)
        fresh_times.append(time.perf_counter() - started)
        stream = pipeline.stream(series[..., :-patch], max_context=max(context, 2 * patch))
        started = time.perf_counter()
        stream.append(series[..., -patch:])
        live = stream.forecast(patch).mean
        sync(args.device)
        stream_times.append(time.perf_counter() - started)
        stream.close()
        worst = max(worst, ((live - fresh.cpu()).abs().max() / fresh.abs().max()).item())
    fresh_s, stream_s = statistics.median(fresh_times[1:]), statistics.median(stream_times[1:])
    return {"series": batch, "context": context, "fresh_s": fresh_s, "stream_s": stream_s, "ratio": stream_s / fresh_s,
            "first_fresh_s": fresh_times[0], "first_stream_s": stream_times[0], "max_rel_diff": worst}  # fmt: skip


def _throughput(pipeline: Any, args: Any, patch: int, rng: np.random.Generator) -> dict[str, Any]:
    """Updates per second of ``stream_series`` univariate streams, ``stream_batch`` per stream object."""
    count, per_batch, context = args.stream_series, args.stream_batch, args.stream_throughput_context
    rounds = args.repeats + 1
    total = context + rounds * patch
    values = (50 + rng.normal(0, 1, (count, total))).astype(np.float32)
    streams = [pipeline.stream(values[i : i + per_batch, :context], max_context=total)
               for i in range(0, count, per_batch)]  # fmt: skip
    times = []
    for r in range(rounds):
        start = context + r * patch
        started = time.perf_counter()
        for index, stream in enumerate(streams):
            stream.append(values[index * per_batch : (index + 1) * per_batch, None, start : start + patch])
            stream.forecast(patch)
        sync(args.device)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times[1:])
    return {"streams": count, "per_batch": per_batch, "context": context, "seconds": seconds,
            "updates_per_s": count / seconds, "bytes_per_stream": streams[0].nbytes() // per_batch}  # fmt: skip


def table(results: dict[str, Any]) -> str:
    lines = [
        f"live streams, {results['device']}, {results['dtype']}: append one patch + forecast one patch (mean) "
        "against a fresh forecast of the same context (medians of the later rounds; the patch is "
        f"{results['patch_size']} steps)",
        "",
        "| series | context | fresh forecast s | append + forecast s | ratio | first round (compiling) fresh / "
        "stream s | max rel. difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['series']} | {row['context']:,} | {row['fresh_s']:.4f} | {row['stream_s']:.4f} | {row['ratio']:.3f} "
            f"| {row['first_fresh_s']:.2f} / {row['first_stream_s']:.2f} | {row['max_rel_diff']:.1e} |"
        )
    t = results["throughput"]
    lines += [
        "",
        f"throughput: {t['streams']:,} univariate streams at a {t['context']:,}-step context, {t['per_batch']} per "
        f"stream object: {t['seconds']:.2f} s per update of all (append + forecast), {t['updates_per_s']:,.0f} "
        f"updates/s; {t['bytes_per_stream'] / 2**20:.2f} MiB per stream",
    ]
    return "\n".join(lines)
