"""Runners for S1-S3 (ours eager and compiled, upstream eager and compiled) and the guarded measurement
every runner goes through: fresh compile state, a time limit, memory peaks, errors kept in the row."""

from __future__ import annotations

import gc
import signal
import statistics
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ...compile.diagnostics import snapshot
from ...data.util.dataset import MaskedTimeseries, masked_timeseries
from ...inference.forecaster import TotoForecaster
from ..common import sync
from .settings import UPSTREAM_DTYPE


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
        from toto_upstream.inference.forecaster import (
            TotoForecaster as UpstreamForecaster,
        )
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

