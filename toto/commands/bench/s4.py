"""S4, many series per call: the workload, AutoGluon-style batches for upstream's baseline, the S4
runners and their measurement in series per second, and the memory check in fresh processes."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ...compile.diagnostics import snapshot
from ...model.toto import Toto
from ...pipeline import TotoPipeline
from ..common import sync
from .report import s4_row
from .runners import guarded
from .settings import BATCHED, S4_RUNNERS, UPSTREAM_DTYPE, S4Settings


def s4_workload(settings: S4Settings) -> list[np.ndarray]:
    """The series: level, trend, a daily-to-weekly season and noise, each from its own seeded generator.

    Deterministic, and the first N series are the same whatever the count asked for.
    """
    workload = []
    for index, length in enumerate(settings.lengths()):
        rng = np.random.default_rng([settings.seed, index])
        level = 10 ** rng.uniform(0, 3)  # 1 to 1,000: the scaler sees very different levels
        amplitude = level * rng.uniform(0.05, 0.5)
        period = rng.choice((24, 48, 96, 168))  # steps
        trend = level * rng.uniform(-2e-4, 2e-4)  # per step
        t = np.arange(length)
        values = (
            level
            + trend * t
            + amplitude * np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
            + rng.normal(0.0, 0.2 * amplitude, length)
        )
        workload.append(values.astype(np.float32))
    return workload


def autogluon_batches(
    series: Sequence[np.ndarray], batch_size: int, container: type, device: str, interval_seconds: int = 3600
) -> Iterator[Any]:
    """Batches built the way AutoGluon's Toto data loader builds them.

    In the given order, ``batch_size`` at a time; each batch left-padded with NaN to its
    longest series, the NaNs then set to 0 and marked unobserved in ``padding_mask``;
    ``id_mask`` the series' index in the batch, zero timestamps, one interval for all.
    """
    for start in range(0, len(series), batch_size):
        chunk = series[start : start + batch_size]
        length = max(len(s) for s in chunk)
        values = torch.full((len(chunk), 1, length), math.nan, dtype=torch.float32)
        for row, s in enumerate(chunk):
            values[row, 0, length - len(s) :] = torch.as_tensor(s, dtype=torch.float32)
        values = values.to(device)
        missing = torch.isnan(values)
        values[missing] = 0.0
        rows = len(chunk)
        yield container(
            values,
            padding_mask=~missing,
            id_mask=torch.arange(rows, dtype=torch.int, device=values.device)[:, None, None].repeat(1, 1, length),
            timestamp_seconds=torch.zeros_like(values, dtype=torch.int),
            time_interval_seconds=torch.full((rows, 1), interval_seconds, dtype=torch.int, device=values.device),
        )


@dataclass(frozen=True)
class S4Runner:
    """One S4 runner: ``build()`` returns ``call(series) -> samples``.

    ``full_warmup``: warm up on the whole workload (ours), else on one batch (upstream eager).
    """

    build: Callable[[], Callable[[Sequence[np.ndarray]], Any]]
    dtype: str
    batch_size: int
    samples_per_batch: int
    full_warmup: bool


def upstream_s4_runner(model, UpstreamForecaster, UpstreamMasked, settings: S4Settings, device: str) -> S4Runner:
    """Upstream eager, called as AutoGluon's ``TotoModel._predict`` calls it."""

    def build():
        forecaster = UpstreamForecaster(model)

        def call(series):
            samples = []
            with torch.inference_mode():  # as AutoGluon
                for batch in autogluon_batches(
                    series, settings.baseline_batch_size, UpstreamMasked, device, settings.interval_seconds
                ):
                    forecast = forecaster.forecast(
                        batch,
                        prediction_length=settings.horizon,
                        num_samples=settings.num_samples,
                        samples_per_batch=settings.baseline_samples_per_batch,
                        use_kv_cache=True,
                    )
                    samples.append(forecast.samples.cpu())
            return samples

        return call

    # Eager: nothing to compile, so one batch warms it up; a full call would double the run's longest part.
    return S4Runner(build, UPSTREAM_DTYPE, settings.baseline_batch_size, settings.baseline_samples_per_batch, False)


def ours_s4_runners(toto: Toto, settings: S4Settings, mode: str, dtype: str) -> dict[str, S4Runner]:
    """``TotoPipeline.predict`` on the whole list; warmed up with a full call (it covers the last, smaller batch)."""

    def runner(**compile_settings: Any) -> S4Runner:
        def build():
            pipeline = TotoPipeline(toto, **compile_settings)

            def call(series):
                return pipeline.predict(
                    list(series),
                    settings.horizon,
                    num_samples=settings.num_samples,
                    samples_per_batch=settings.samples_per_batch,
                    batch_size=settings.batch_size,
                    seed=0,
                    show_progress=False,
                )

            return call

        return S4Runner(build, dtype, settings.batch_size, settings.samples_per_batch, True)

    return {
        "ours-eager": runner(torch_compile=False),
        "ours-compiled": runner(torch_compile=True, compile_mode=mode),
        "ours-compiled-prefill": runner(torch_compile=True, compile_mode=mode, compile_prefill=True),
    }


def measure_s4(runner: S4Runner, series: Sequence[np.ndarray], device: str, repeats: int) -> dict:
    """A warm-up call (not timed into the result's speed), then ``repeats`` timed calls on the whole workload."""
    call = runner.build()
    warmup = series if runner.full_warmup else series[: runner.batch_size]
    before = snapshot()
    torch.manual_seed(0)
    sync(device)
    start = time.perf_counter()
    call(warmup)
    sync(device)
    warmup_s = time.perf_counter() - start
    warm = snapshot()
    times = []
    for i in range(repeats):
        torch.manual_seed(i + 1)
        sync(device)
        start = time.perf_counter()
        call(series)
        sync(device)
        times.append(time.perf_counter() - start)
    later = statistics.median(times)
    return {
        "batch_size": runner.batch_size,
        "samples_per_batch": runner.samples_per_batch,
        "warmup": "full call" if runner.full_warmup else f"first {len(warmup)} series",
        "warmup_s": warmup_s,
        "times_s": times,
        "later_s": later,
        "series_per_s": series_per_second(len(series), later),
        **(snapshot() - before).as_dict(),
        "graphs_after_warmup": (snapshot() - warm).graphs,
        "process_max_rss_mib": process_max_rss_mib(),
    }


def series_per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


def process_max_rss_mib() -> float | None:
    """The process's peak RSS since it started (``ru_maxrss``: KiB on Linux), or None where unknown."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def run_s4(
    report: dict,
    toto: Toto,
    upstream_parts: tuple | None,
    settings: S4Settings,
    runners: list[str],
    device: str,
    mode: str,
    dtype: str,
    repeats: int,
    timeout: float | None,
) -> None:
    """Every S4 runner in ``runners``, its row printed to stderr as it ends; results in ``report``."""
    series = s4_workload(settings)
    table_runners = ours_s4_runners(toto, settings, mode, dtype)
    if upstream_parts is not None:
        table_runners["upstream-eager"] = upstream_s4_runner(*upstream_parts, settings, device)
    results = report["results"].setdefault(BATCHED, {})
    print(f"S4 workload: {settings.describe()}", file=sys.stderr, flush=True)
    for name in runners:
        if name not in S4_RUNNERS:
            continue
        runner = table_runners[name]
        result = guarded(lambda r=runner: measure_s4(r, series, device, repeats), device, timeout, runner.dtype)
        result.setdefault("batch_size", runner.batch_size)
        result.setdefault("samples_per_batch", runner.samples_per_batch)
        results[name] = result
        print(s4_row(name, result, results.get("upstream-eager")), file=sys.stderr, flush=True)


def s4_memory(args: argparse.Namespace) -> dict:
    """ours-compiled on N, then 2N series, each in a fresh ``toto-compiled bench`` process: both peaks, their ratio."""
    counts = (args.s4_series, 2 * args.s4_series)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in counts:
            out = Path(tmp) / f"s4_{count}.json"
            command = [
                sys.executable, "-m", "toto.cli", "bench", "--device", args.device, "--scenarios", BATCHED,
                "--runners", "ours-compiled", "--dtype", args.dtype, "--repeats", "1",
                "--s4-series", str(count), "--s4-max-context", str(args.s4_max_context),
                "--s4-batch-size", str(args.s4_batch_size), "--s4-samples-per-batch", str(args.s4_samples_per_batch),
                "--json", str(out),
            ]  # fmt: skip
            if args.compile_mode:
                command += ["--compile-mode", args.compile_mode]
            if args.runner_timeout:
                command += ["--runner-timeout", str(args.runner_timeout)]
            if args.config:
                command += ["--config", str(args.config.resolve())]
            print(f"S4 memory: ours-compiled on {count} series in a fresh process", file=sys.stderr, flush=True)
            runs.append({"series": count, **memory_child(command, out)})
    peaks = [run.get("peak_mib") for run in runs]
    rss = [run.get("process_max_rss_mib") for run in runs]
    return {
        "device": args.device,
        "runs": runs,
        "peak_ratio": peaks[1] / peaks[0] if all(peaks) else None,
        "process_rss_ratio": rss[1] / rss[0] if all(rss) else None,
    }


def memory_child(command: list[str], out: Path) -> dict:
    """Run one child benchmark; its ours-compiled peak (runner and whole process), or ``{"error": ...}``."""
    package_root = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    try:
        result = json.loads(out.read_text())["results"][BATCHED]["ours-compiled"]
    except (OSError, ValueError, KeyError):
        tail = " ".join(done.stderr.split()[-40:])
        return {"error": f"exit {done.returncode}: {tail}".replace("|", "/")}
    if "error" in result:
        return {"error": result["error"]}
    keep = ("peak_mib", "process_max_rss_mib", "later_s", "series_per_s")
    return {key: result[key] for key in keep}

