"""``toto-compiled bench``: upstream toto-ts (eager and compiled) against ours (eager and compiled).

One process, one run, full-size random weights in the published layout, so every
runner sees the same checkpoint files and inputs. Scenarios:

  S1  context 512,  horizon 8,   1,024 samples   (a backtest call)
  S2  context 2048, horizon 256, 256 samples
  S3  context 4096, horizon 512, mean only
  S4  throughput over many series: 256 univariate series of 300-3,000 steps (lengths
      drawn with a fixed seed), horizon 64, 128 samples; series per second. Not in the
      default list (upstream eager takes tens of minutes on a CPU); ``--s4-series`` and
      ``--s4-max-context`` scale it down. Its baseline is upstream eager called the way
      AutoGluon's Toto model calls it (batches of 16 in the given order, left-padded to
      each batch's longest, ``samples_per_batch=32``); ours is ``TotoPipeline.predict`` on
      the whole list. ``--s4-memory`` adds ours-compiled's peak memory at N and 2N series,
      each in a fresh process.

Runners: upstream eager and compiled (``torch.compile`` on its backbone, the usual
wrapper); ours eager, compiled (prefill compiled or not as the device's default
says) and compiled with ``compile_prefill=True``. ``--dtype`` sets the dtype of
our model; upstream always runs in float32. A runner that fails or runs past
``--runner-timeout`` gets its error in its row; the table goes on.

The upstream runners need ``toto_upstream`` importable (``python
scripts/install_oracle.py`` puts it in ``.oracle/``, found by ``--oracle``);
without it they are skipped and said to be. Speed-ups compare the steady-state
("later") call with upstream eager's.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..compile.policy import default_compile_prefill, default_mode
from ..config import PUBLISHED_CONFIG
from ..data.util.dataset import MaskedTimeseries, masked_timeseries
from ..compile.diagnostics import snapshot
from ..inference.forecaster import TotoForecaster
from ..model.toto import Toto
from ..pipeline.pipeline import TotoPipeline
from ..checkpoints.random_weights import write_checkpoint
from .common import add_device_argument, describe, device_unavailable, sync

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
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
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


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark upstream and ours, eager and compiled", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser)
    parser.add_argument(
        "--scenarios", default="S1,S2,S3", type=_choices(SCENARIO_NAMES),
        help="default: %(default)s; S4 (many series per call, slow for upstream on a CPU) runs only when named",
    )  # fmt: skip
    parser.add_argument(
        "--runners", default=",".join(RUNNERS), type=_choices(RUNNERS),
        help="default: all five (S4 leaves out upstream-compiled)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default="float32", help="our model's dtype; upstream stays float32"
    )
    parser.add_argument("--repeats", type=int, default=2, help="steady-state calls after the first (default: 2)")
    parser.add_argument("--compile-mode", default=None, help="default: the device's default")
    parser.add_argument(
        "--runner-timeout", type=float, default=None, metavar="S",
        help="give up on a runner after S seconds (its row says so) and go on with the next",
    )  # fmt: skip
    parser.add_argument("--oracle", type=Path, default=Path(".oracle"), help="folder holding toto_upstream (default: .oracle)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--config", type=Path, metavar="JSON",
        help="a model config.json to benchmark instead of the published architecture (random weights either way)",
    )  # fmt: skip
    s4 = S4Settings()
    group = parser.add_argument_group("S4 (many series per call)")
    group.add_argument(
        "--s4-series", type=int, default=s4.series, metavar="N", help="series in S4 (default: %(default)s)"
    )
    group.add_argument(
        "--s4-max-context", type=int, default=s4.max_context, metavar="T",
        help=f"longest S4 context; lengths are drawn from {s4.min_context}-T, or all T if T < {s4.min_context} "
        "(default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--s4-batch-size", type=int, default=s4.batch_size, metavar="B",
        help="ours: series per batch (default: %(default)s, best on CPU; on a GPU larger is better)",
    )  # fmt: skip
    group.add_argument(
        "--s4-samples-per-batch", type=int, default=s4.samples_per_batch, metavar="S",
        help="ours: samples per batch (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--s4-memory", action="store_true",
        help="also run ours-compiled on N and 2N series, each in a fresh process, and report both peaks",
    )  # fmt: skip


def _choices(allowed) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",")]
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(allowed)}")
        return names

    return parse


def run(args: argparse.Namespace) -> int:
    if device_unavailable("toto-compiled bench", args.device):
        return 2
    if args.repeats < 1:
        print("toto-compiled bench: error: --repeats must be at least 1", file=sys.stderr)
        return 2
    problem = s4_problem(args)
    if problem:
        print(f"toto-compiled bench: error: {problem}", file=sys.stderr)
        return 2
    config = PUBLISHED_CONFIG
    if args.config:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, ValueError) as err:
            print(f"toto-compiled bench: error: --config {args.config}: {err}", file=sys.stderr)
            return 2
    runners = args.runners
    if any(r.startswith("upstream") for r in runners) and not oracle_available(args.oracle):
        runners = [r for r in runners if not r.startswith("upstream")]
        print(
            f"upstream runners skipped: toto_upstream is not importable (looked in {args.oracle}; "
            "install it with python scripts/install_oracle.py)",
            file=sys.stderr,
        )
    report = benchmark(
        args.device, args.scenarios, runners, args.repeats, args.compile_mode, args.dtype, args.runner_timeout,
        s4=s4_settings(args), config=config,
    )  # fmt: skip
    if args.s4_memory and not report["stopped"]:
        try:
            report["s4"]["memory"] = s4_memory(args)
        except KeyboardInterrupt:  # the child is killed with it; print what the runners measured
            report["stopped"] = INTERRUPTED
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["stopped"]:
        return 130 if report["stopped"] == INTERRUPTED else 1
    # Upstream failing (e.g. compiled under CUDA graphs) is a finding about the baseline; ours failing is an error.
    memory_failed = any("error" in child for child in report.get("s4", {}).get("memory", {}).get("runs", []))
    return 1 if memory_failed or any(r.startswith("ours") and "error" in row for r, row in _rows(report)) else 0


def oracle_available(folder: Path) -> bool:
    """Whether ``folder`` holds an importable oracle (not one some earlier import left in ``sys.modules``)."""
    if not (folder / "toto_upstream").is_dir():
        return False
    if str(folder.resolve()) not in sys.path:
        sys.path.append(str(folder.resolve()))
    try:
        import toto_upstream  # noqa: F401
    except ImportError:
        return False
    return True


def load_upstream(checkpoint: Path, device: str):
    """Upstream's backbone, forecaster class and ``MaskedTimeseries`` class."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from toto_upstream.data.util import dataset as upstream_dataset
        from toto_upstream.inference.forecaster import TotoForecaster as UpstreamForecaster
        from toto_upstream.model.toto import Toto as UpstreamToto
    model = UpstreamToto.load_from_checkpoint(str(checkpoint), map_location=device).model.eval()
    return model, UpstreamForecaster, upstream_dataset.MaskedTimeseries


def inputs(container, context: int, device: str):
    """A random walk around 100, one univariate series, in ``container`` (ours or upstream's MaskedTimeseries)."""
    gen = torch.Generator().manual_seed(0)
    series = (100 + torch.randn(1, 1, context, generator=gen).cumsum(-1)).to(device)
    return masked_timeseries(series, container=container)


@dataclass(frozen=True)
class Runner:
    """How to build one runner's forecaster (inside the guarded measurement), and what it is fed."""

    build: Callable[[], Any]  # returns an object with ``forecast(inputs, **kwargs)``
    inputs: Any
    dtype: str


class RunnerTimeout(BaseException):
    """Raised from SIGALRM. A BaseException so that compiler code catching ``Exception`` lets it through."""


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`RunnerTimeout` after ``seconds`` (None: no limit). SIGALRM: main thread only."""
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise RunnerTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def measure(forecaster: Any, forecast_in: Any, kwargs: dict, device: str, repeats: int) -> dict:
    """The first call (compiles, records CUDA graphs) and ``repeats`` later ones, with compile counters."""
    before = snapshot()
    times = []
    for i in range(repeats + 1):
        torch.manual_seed(i)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            forecaster.forecast(forecast_in, **kwargs)
        sync(device)
        times.append(time.perf_counter() - start)
    stats = snapshot() - before
    later = statistics.median(times[1:])
    result = {"first_s": times[0], "later_s": later, "compile_s": max(0.0, times[0] - later), **stats.as_dict()}
    fallback = getattr(forecaster, "compile_error", None)  # ours: compiling failed and it ran eagerly
    if fallback:
        result["note"] = f"compile fell back to eager: {fallback}"
    return result


def measure_runner(runner: Runner, kwargs: dict, device: str, repeats: int, timeout: float | None) -> dict:
    """:func:`measure` with fresh compile state and memory peak; a failure or timeout becomes ``{"error": ...}``."""
    work = lambda: measure(runner.build(), runner.inputs, kwargs, device, repeats)  # noqa: E731
    return guarded(work, device, timeout, runner.dtype)


def guarded(work: Callable[[], dict], device: str, timeout: float | None, dtype: str) -> dict:
    """``work()`` with fresh compile state, its memory peak added; a failure or timeout becomes ``{"error": ...}``.

    Everything that touches the device is inside the ``try``: after a CUDA error every
    later CUDA call raises too, and each runner's row should say so rather than end the table.
    """
    try:
        with time_limit(timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._dynamo.reset()  # every runner compiles from scratch (inductor's on-disk cache stays)
            reset_peak_memory(device)
            result = work()
            result["peak_mib"] = peak_memory_mib(device)
    except RunnerTimeout:
        result = {"error": f"timed out after {timeout:g} s"}
    except Exception as err:  # noqa: BLE001 - any failure of one runner is reported in its row
        result = {"error": one_line(err)}
    result["dtype"] = dtype
    release(device)
    return result


def one_line(err: BaseException, limit: int = 240) -> str:
    """An error as one table-safe line."""
    text = " ".join(f"{type(err).__name__}: {err}".split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reset_peak_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mib(device: str) -> float | None:
    """CUDA: the caching allocator's peak. CPU: the process's peak RSS on Linux, else None."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**10  # kB
    return None


def release(device: str) -> None:
    """Drop what the last runner left (forecaster buffers, CUDA-graph pools) before the next one's peak."""
    gc.collect()
    try:
        torch._dynamo.reset()  # also frees the CUDA-graph trees
        if device == "cuda":
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - a failed runner may leave broken state; the next runner reports it
        pass


def ours_runners(model, forecast_in: MaskedTimeseries, mode: str, dtype: str) -> dict[str, Runner]:
    def runner(**settings: Any) -> Runner:
        return Runner(lambda: TotoForecaster(model, **settings), forecast_in, dtype)

    return {
        "ours-eager": runner(torch_compile=False),
        # compile_prefill left out: the device's default (on for CUDA, off for CPU)
        "ours-compiled": runner(torch_compile=True, compile_mode=mode),
        "ours-compiled-prefill": runner(torch_compile=True, compile_mode=mode, compile_prefill=True),
    }


def upstream_runners(model, UpstreamForecaster, forecast_in, mode: str) -> dict[str, Runner]:
    return {
        "upstream-eager": Runner(lambda: UpstreamForecaster(model), forecast_in, UPSTREAM_DTYPE),
        # the usual wrapper; torch.compile is lazy, so compiling happens (and may fail) in the first call
        "upstream-compiled": Runner(
            lambda: UpstreamForecaster(torch.compile(model, mode=mode)), forecast_in, UPSTREAM_DTYPE
        ),
    }


def forecast_kwargs(scenario: dict) -> dict:
    kwargs = {"prediction_length": scenario["horizon"], "num_samples": scenario["num_samples"]}
    if scenario["num_samples"]:
        kwargs["samples_per_batch"] = scenario["num_samples"]
    return kwargs


def benchmark(
    device: str,
    scenarios: list[str],
    runners: list[str],
    repeats: int,
    compile_mode: str | None,
    dtype: str = "float32",
    runner_timeout: float | None = None,
    *,
    s4: S4Settings | None = None,
    config: dict = PUBLISHED_CONFIG,
) -> dict:
    """Every runner on every scenario (S4: the runners of :data:`S4_RUNNERS`, with ``s4``'s settings).

    ``config``: the architecture, random weights; the published one unless a test asks.
    Ctrl-C (or SIGINT from ``timeout``) or an error outside a runner ends it early; the
    report then holds what was measured and ``stopped`` says why.
    """
    mode = compile_mode or default_mode(device)
    upstream = any(r.startswith("upstream") for r in runners)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), config, seed=0)
        ours_toto = Toto.load_from_checkpoint(checkpoint, map_location=device, dtype=DTYPES[dtype])
        ours = ours_toto.model
        if upstream:
            theirs, UpstreamForecaster, UpstreamMasked = load_upstream(checkpoint, device)
    report = {
        "device": describe(device),
        "compile_mode": mode,
        "torch": torch.__version__,
        "device_type": device,
        "dtype": dtype,
        "default_compile_prefill": default_compile_prefill(device),
        "stopped": None,  # why the run ended before the last runner, if it did
        "results": {},
    }
    if BATCHED in scenarios:
        s4 = s4 or S4Settings()
        skipped = [r for r in runners if r not in S4_RUNNERS]
        report["s4"] = {"settings": dataclasses.asdict(s4), "workload": s4.describe(), "skipped_runners": skipped}
        if skipped:
            print(f"S4: {', '.join(skipped)} left out (not an S4 runner; see S4_RUNNERS)", file=sys.stderr, flush=True)
    try:
        for name in scenarios:
            if name == BATCHED:
                upstream_parts = (theirs, UpstreamForecaster, UpstreamMasked) if upstream else None
                run_s4(report, ours_toto, upstream_parts, s4, runners, device, mode, dtype, repeats, runner_timeout)
                continue
            scenario = SCENARIOS[name]
            table_runners = ours_runners(ours, inputs(MaskedTimeseries, scenario["context"], device), mode, dtype)
            if upstream:
                theirs_in = inputs(UpstreamMasked, scenario["context"], device)
                table_runners.update(upstream_runners(theirs, UpstreamForecaster, theirs_in, mode))
            results = report["results"].setdefault(name, {})
            kwargs = forecast_kwargs(scenario)
            for runner in runners:
                results[runner] = measure_runner(table_runners[runner], kwargs, device, repeats, runner_timeout)
                print(row(name, runner, results[runner], results.get("upstream-eager")), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        report["stopped"] = INTERRUPTED
    except Exception as err:  # noqa: BLE001 - outside any runner (e.g. a broken CUDA context): keep the table
        report["stopped"] = one_line(err)
    if report["stopped"]:
        print(f"stopped early ({report['stopped']}): the table holds what was measured", file=sys.stderr, flush=True)
    if "s4" in report:
        report["s4"]["speed_up"] = s4_speed_ups(report["results"].get(BATCHED, {}))
    return report


# ---- S4: many series per call ------------------------------------------------------------


def s4_settings(args: argparse.Namespace) -> S4Settings:
    return S4Settings(
        series=args.s4_series,
        max_context=args.s4_max_context,
        batch_size=args.s4_batch_size,
        samples_per_batch=args.s4_samples_per_batch,
    )


def s4_problem(args: argparse.Namespace) -> str | None:
    """A usage error in the S4 options, or None."""
    for option in ("s4_series", "s4_max_context", "s4_batch_size", "s4_samples_per_batch"):
        if getattr(args, option) < 1:
            return f"--{option.replace('_', '-')} must be at least 1"
    if args.s4_memory and BATCHED not in args.scenarios:
        return "--s4-memory measures S4: add S4 to --scenarios"
    return None


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


def s4_speed_ups(results: dict) -> dict[str, float]:
    """Each of ours' series/s over upstream eager's (same workload, so its later call time over ours)."""
    base = results.get("upstream-eager", {}).get("later_s")
    if not base:
        return {}
    return {
        name: base / r["later_s"]
        for name, r in results.items()
        if name.startswith("ours") and r.get("later_s")
    }


def _failed_cells(r: dict, remaining: int) -> list[str]:
    """A failed runner's row: the error, then dashes to the table's width."""
    return [f"failed: {r['error']}"] + ["-"] * (remaining - 1)


def _peak_and_speed_up(r: dict, base: dict | None) -> list[str]:
    """The peak-memory and speed-up cells (against ``base``'s later call) of a measured runner."""
    base_s = base.get("later_s") if base else None
    peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a"
    return [peak, f"{base_s / r['later_s']:.1f}x" if base_s else "n/a"]


def s4_row(runner: str, r: dict, base: dict | None) -> str:
    cells = [BATCHED, runner, r["dtype"], str(r["batch_size"]), str(r["samples_per_batch"])]
    if "error" in r:
        cells += _failed_cells(r, len(S4_COLUMNS) - len(cells))
    else:
        cells += [
            f"{r['warmup_s']:.2f}", f"{r['later_s']:.3f}", f"{r['series_per_s']:.2f}", *_peak_and_speed_up(r, base),
            str(r["graphs"]), str(r["graphs_after_warmup"]), str(r["graph_breaks"]), str(r["recompiles"]),
            str(r["cudagraph_skips"]),
        ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def s4_table(report: dict) -> list[str]:
    """S4's lines: the workload and settings, its table, the headline ratio and the memory check."""
    s4 = report["s4"]
    settings = S4Settings(**s4["settings"])
    results = report["results"].get(BATCHED, {})
    lines = [f"S4 workload: {s4['workload']}"]
    if "upstream-eager" in results:
        lines.append(
            f"  upstream-eager as AutoGluon calls it: batches of {settings.baseline_batch_size} in the given order, "
            f"each left-padded to its longest (NaN, then 0 and masked), samples_per_batch "
            f"{settings.baseline_samples_per_batch}, KV cache; warm-up: one batch (eager: nothing to compile)"
        )
    lines += [
        f"  ours: TotoPipeline.predict on the whole list, batch_size {settings.batch_size}, samples_per_batch "
        f"{settings.samples_per_batch}, longest first; warm-up: one full call. Later call: median of the timed calls; "
        "series/s: series / later call",
        "",
        "| " + " | ".join(S4_COLUMNS) + " |",
        "|---" * len(S4_COLUMNS) + "|",
    ]
    lines += [s4_row(name, r, results.get("upstream-eager")) for name, r in results.items()]
    ratio = s4.get("speed_up", {}).get("ours-compiled")
    if ratio is not None:
        ours, base = results["ours-compiled"], results["upstream-eager"]
        lines.append(
            f"S4 ours-compiled / upstream-eager: {ratio:.1f}x "
            f"({ours['series_per_s']:.2f} against {base['series_per_s']:.3f} series/s)"
        )
    memory = s4.get("memory")
    if memory:
        lines.append(memory_line(memory))
    return lines


def memory_line(memory: dict) -> str:
    runs = memory["runs"]
    what = "torch.cuda.max_memory_allocated" if memory["device"] == "cuda" else "peak RSS during the runner"
    parts = []
    for run in runs:
        if "error" in run:
            parts.append(f"{run['series']} series: failed: {run['error']}")
        else:
            rss = run.get("process_max_rss_mib")
            whole = f", process max RSS {rss:.0f} MiB" if rss is not None else ""
            parts.append(f"{run['series']} series: {run['peak_mib']:.0f} MiB{whole}")
    text = f"S4 memory, ours-compiled, a fresh process each ({what}): " + "; ".join(parts)
    if memory.get("peak_ratio") is not None:
        text += f"; ratio {memory['peak_ratio']:.3f}"
        if memory.get("process_rss_ratio") is not None:
            text += f" (process max RSS {memory['process_rss_ratio']:.3f})"
    return text


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
    package_root = str(Path(__file__).resolve().parents[2])
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


def _rows(report: dict) -> Iterator[tuple[str, dict]]:
    for runners in report["results"].values():
        yield from runners.items()


def row(scenario: str, runner: str, r: dict, base: dict | None) -> str:
    cells = [scenario, runner, r["dtype"]]
    if "error" in r:
        cells += _failed_cells(r, len(COLUMNS) - len(cells))
    else:
        cells += [
            f"{r['first_s']:.2f}", f"{r['later_s']:.3f}", f"{r['compile_s']:.1f}", *_peak_and_speed_up(r, base),
            str(r["graphs"]), str(r["graph_breaks"]), str(r["recompiles"]), str(r["cudagraph_skips"]),
        ]  # fmt: skip
        if "note" in r:
            cells[-1] += f" ({r['note']})"
    return "| " + " | ".join(cells) + " |"


def table(report: dict) -> str:
    peak = "torch.cuda.max_memory_allocated" if report["device_type"] == "cuda" else "the process's peak RSS"
    prefill = "compiled" if report["default_compile_prefill"] else "eager"
    lines = [
        f"device: {report['device']}; torch {report['torch']}; compile mode {report['compile_mode']}",
        f"ours in {report['dtype']}, upstream in {UPSTREAM_DTYPE}; ours-compiled runs prefill {prefill} "
        f"(the device's default); peak MiB: {peak}, every loaded model's weights included",
        "",
    ]
    if "s4" not in report or any(name != BATCHED for name in report["results"]):
        lines += ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
        for name, runners in report["results"].items():
            if name == BATCHED:
                continue
            for runner, r in runners.items():
                lines.append(row(name, runner, r, runners.get("upstream-eager")))
        if "s4" in report:
            lines.append("")
    if "s4" in report:
        lines += s4_table(report)
    if report["stopped"]:
        lines.append(f"(stopped early, rows missing: {report['stopped']})")
    return "\n".join(lines)
