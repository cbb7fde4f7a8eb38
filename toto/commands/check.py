"""``toto-compiled check``: eager and compiled forecasting side by side, then a TEST SUMMARY.

Checks that the compiled path gives the same numbers as eager (mean path, and
sample accuracy at equal seeds), is not slower on CUDA (on a CPU the speed-up is
reported, not judged), and stays healthy: no graph breaks, no recompiles in
steady state (run under ``fail_on_recompile``), no CUDA-graph skips. Without
``--model`` it loads the published architecture with random weights, which
checks equivalence and speed, not forecast quality.
"""

from __future__ import annotations

import argparse
import math
import platform
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .. import __version__
from ..config import PUBLISHED_CONFIG
from ..data.util.dataset import MaskedTimeseries, masked_timeseries
from ..compile.diagnostics import CompileStats, snapshot
from ..inference.forecaster import TotoForecaster, bucket_capacity
from ..model.toto import Toto
from ..checkpoints.random_weights import write_checkpoint
from .common import add_device_argument, describe, device_unavailable, sync

MEAN_PATH_BOUND = 1e-4  # max relative difference, float32; compiled code reorders reductions
MAE_BOUND = 0.10  # relative; inductor draws its own random numbers, so samples differ at equal seeds
MIN_CUDA_SPEEDUP = 1.0  # on CPU a batched step is compute-bound: compiling promises no speed-up, so none is judged


@dataclass(frozen=True)
class Scenario:
    context: int
    horizon: int
    num_samples: int
    repeats: int  # timed later calls of each forecaster, interleaved; the minimum is reported


QUICK = Scenario(context=512, horizon=192, num_samples=64, repeats=5)
THOROUGH = Scenario(context=2048, horizon=512, num_samples=256, repeats=5)


@dataclass(frozen=True)
class Row:
    name: str
    eager: str
    compiled: str
    verdict: str  # PASS, FAIL, or info
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == "FAIL"


@dataclass
class FirstRuns:
    mean: Tensor
    samples: Tensor
    first_s: float  # the first mean-path and the first sampled call: includes compiling both steps
    peak_mib: float | None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check",
        help="verify compiled forecasting against eager and print a TEST SUMMARY",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--quick", action="store_true", help="a short scenario: about 1-2 minutes on a 2-core CPU")
    parser.add_argument("--model", help="hub id or local checkpoint folder (default: random weights, published architecture)")
    add_device_argument(parser)
    parser.add_argument("--compile-mode", help="torch.compile mode (default: the device's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if device_unavailable("toto-compiled check", args.device):
        return 2
    scenario = QUICK if args.quick else THOROUGH
    try:
        model, model_note = load_model(args.model, args.device)
    except (OSError, ValueError) as err:  # no such folder, hub failure, bad config or weights
        print(f"toto-compiled check: error: cannot load model {args.model!r}: {err}", file=sys.stderr)
        return 2
    print(f"model: {model_note}", file=sys.stderr, flush=True)
    eager = TotoForecaster(model.model, torch_compile=False)
    compiled = TotoForecaster(model.model, torch_compile=True, compile_mode=args.compile_mode)
    rows = compare(eager, compiled, scenario, args.device, args.seed)
    print(summary(rows, scenario, args.device, compiled.compile_settings.mode, model_note, args.seed))
    return 1 if any(row.failed for row in rows) else 0


def load_model(model_id: str | None, device: str) -> tuple[Toto, str]:
    if model_id is not None:
        return Toto.from_pretrained(model_id, device=device).eval(), model_id
    with tempfile.TemporaryDirectory() as tmp:
        model = Toto.load_from_checkpoint(write_checkpoint(Path(tmp), PUBLISHED_CONFIG, seed=0), map_location=device)
    note = "published architecture with RANDOM weights (checks equivalence and speed, not forecast quality)"
    return model.eval(), note


def synthetic_series(length: int, seed: int) -> Tensor:
    """A 15-minute metric: daily and weekly cycles, a slow trend and noise, around 100."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float64)
    daily, weekly = 96, 96 * 7
    values = (
        100
        + 0.002 * t
        + 8 * torch.sin(2 * math.pi * t / daily)
        + 3 * torch.sin(2 * math.pi * t / weekly)
        + torch.randn(length, generator=gen, dtype=torch.float64)
    )
    return values.float()


def masked(series: Tensor, device: str) -> MaskedTimeseries:
    return masked_timeseries(series.reshape(1, 1, -1).to(device))


def first_runs(
    label: str, forecaster: TotoForecaster, inputs: MaskedTimeseries, scenario: Scenario, device: str, seed: int
) -> FirstRuns:
    """The first mean-path call and the first sampled call (compiling both decode steps, when compiled)."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    mean = forecaster.forecast(inputs, scenario.horizon).mean
    mean_s = time.perf_counter() - start
    print(f"{label}: mean path {mean_s:.2f} s", file=sys.stderr, flush=True)
    samples, sampled_s = sampled_call(forecaster, inputs, scenario, device, seed)
    print(f"{label}: first sampled call {sampled_s:.2f} s", file=sys.stderr, flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return FirstRuns(mean.cpu(), samples.cpu(), mean_s + sampled_s, peak)


def sampled_call(
    forecaster: TotoForecaster, inputs: MaskedTimeseries, scenario: Scenario, device: str, seed: int
) -> tuple[Tensor, float]:
    """One sampled forecast at ``seed``: its samples and its wall-clock seconds."""
    torch.manual_seed(seed)
    sync(device)
    start = time.perf_counter()
    samples = forecaster.forecast(
        inputs, scenario.horizon, num_samples=scenario.num_samples, samples_per_batch=scenario.num_samples
    ).samples
    sync(device)
    return samples, time.perf_counter() - start


def later_call_times(
    forecasters: dict[str, TotoForecaster], inputs: MaskedTimeseries, scenario: Scenario, device: str, seed: int
) -> dict[str, float]:
    """The fastest of ``scenario.repeats`` later sampled calls of each forecaster.

    Calls alternate between forecasters, so that a change in machine load hits both
    alike; the minimum is the least noisy estimate of what a call costs.
    """
    times: dict[str, list[float]] = {label: [] for label in forecasters}
    for repeat in range(scenario.repeats):
        for label, forecaster in forecasters.items():
            seconds = sampled_call(forecaster, inputs, scenario, device, seed)[1]
            times[label].append(seconds)
            print(f"{label}: later call {repeat + 1}/{scenario.repeats} {seconds:.2f} s", file=sys.stderr, flush=True)
    return {label: min(seconds) for label, seconds in times.items()}


def steady_state(compiled: TotoForecaster, series: Tensor, scenario: Scenario, device: str) -> tuple[CompileStats, str]:
    """Repeat the calls, and a shorter context in the same capacity bucket, with recompiles made errors."""
    shorter = same_bucket_shorter(series, scenario.horizon, compiled.model.patch_size)
    before = snapshot()
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            for context in (series, shorter):
                compiled.forecast(masked(context, device), scenario.horizon)
                compiled.forecast(
                    masked(context, device), scenario.horizon, scenario.num_samples, samples_per_batch=scenario.num_samples
                )
    except Exception as err:  # noqa: BLE001 - a recompile under fail_on_recompile, reported as a failed check
        return snapshot() - before, f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return snapshot() - before, ""


def same_bucket_shorter(series: Tensor, horizon: int, patch: int) -> Tensor:
    """The series less a few leading patches, as long as the KV-cache capacity bucket stays the same."""
    steps = -(-horizon // patch) - 1
    patches = -(-series.shape[-1] // patch)
    for drop in (3, 2, 1):
        if patches > drop and bucket_capacity(patches - drop + steps) == bucket_capacity(patches + steps):
            return series[drop * patch :]
    return series


def compare(eager: TotoForecaster, compiled: TotoForecaster, scenario: Scenario, device: str, seed: int) -> list[Row]:
    full = synthetic_series(scenario.context + scenario.horizon, seed)
    series, future = full[: scenario.context], full[scenario.context :]
    inputs = masked(series, device)
    with torch.no_grad():
        plain = first_runs("eager", eager, inputs, scenario, device, seed)
        before = snapshot()
        fast = first_runs("compiled", compiled, inputs, scenario, device, seed)
        later = later_call_times({"eager": eager, "compiled": compiled}, inputs, scenario, device, seed)
        warm = snapshot() - before  # the later calls too: a recompile there is counted (eager compiles nothing)
        steady, steady_error = steady_state(compiled, series, scenario, device)

    rows = [
        Row("compiled path active", "-", "yes" if compiled.compiled else "no", _verdict(compiled.compiled),
            compiled.compile_error or ""),
    ]
    diff = ((fast.mean.double() - plain.mean.double()).abs().max() / plain.mean.double().abs().max()).item()
    rows.append(Row("parameter difference (mean path, max rel.)", "-", f"{diff:.1e}", _verdict(diff <= MEAN_PATH_BOUND),
                    f"<= {MEAN_PATH_BOUND:.0e}"))
    mae_eager, mae_compiled = (_median_mae(r.samples, future) for r in (plain, fast))
    mae_diff = abs(mae_compiled - mae_eager) / mae_eager
    rows.append(Row("sample MAE vs held-out, same seed", f"{mae_eager:.4g}", f"{mae_compiled:.4g}",
                    _verdict(mae_diff <= MAE_BOUND), f"differ by {mae_diff:.1%}, <= {MAE_BOUND:.0%}"))
    rows.append(speed_row(later["eager"], later["compiled"], scenario.repeats, device))
    rows.append(Row("first calls incl. compile (mean + sampled), s", f"{plain.first_s:.2f}", f"{fast.first_s:.2f}", "info"))
    breaks = warm.graph_breaks + steady.graph_breaks
    rows.append(Row("graph breaks", "-", str(breaks), _verdict(breaks == 0)))
    what = "prefill, draws and decode steps" if compiled.compile_settings.compile_prefill else "one per decode-step kind"
    rows.append(Row("graphs compiled (warm-up)", "-", str(warm.graphs), "info", what))
    new = steady.recompiles + steady.graphs
    rows.append(Row("recompiles + new graphs (steady state)", "-", str(new), _verdict(new == 0 and not steady_error),
                    steady_error or "same calls again and a shorter context, fail_on_recompile"))
    if device == "cuda":
        skips = warm.cudagraph_skips + steady.cudagraph_skips
        rows.append(Row("CUDA-graph skips", "-", str(skips), _verdict(skips == 0)))
        rows.append(Row("peak memory, MiB", f"{plain.peak_mib:.0f}", f"{fast.peak_mib:.0f}", "info"))
    else:
        rows.append(Row("peak memory (process RSS), MiB", "-", f"{_peak_rss_mib():.0f}", "info", "eager and compiled together"))
    return rows


def speed_row(eager_s: float, compiled_s: float, repeats: int, device: str) -> Row:
    """Later-call times and the speed-up: judged on CUDA, only reported on a CPU."""
    name = f"later call, s (min of {repeats}, interleaved)"
    speedup = eager_s / compiled_s
    times = (f"{eager_s:.3f}", f"{compiled_s:.3f}")
    if device == "cuda":
        return Row(name, *times, _verdict(speedup >= MIN_CUDA_SPEEDUP), f"speed-up {speedup:.2f}x, >= {MIN_CUDA_SPEEDUP}x")
    return Row(name, *times, "info", f"speed-up {speedup:.2f}x (not judged on CPU: compute-bound at this size)")


def summary(rows: list[Row], scenario: Scenario, device: str, mode: str, model_note: str, seed: int) -> str:
    where = describe(device)
    lines = [
        "",
        "TEST SUMMARY",
        f"toto-compiled {__version__}, torch {torch.__version__}, {where}, compile mode {mode}",
        f"model: {model_note}",
        f"series: synthetic 15-minute metric, context {scenario.context}, horizon {scenario.horizon}, "
        f"{scenario.num_samples} samples, seed {seed}",
        "",
    ]
    table = [("check", "eager", "compiled", "result", "")] + [
        (r.name, r.eager, r.compiled, r.verdict, r.detail) for r in rows
    ]
    widths = [max(len(cells[i]) for cells in table) for i in range(4)]
    for cells in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + cells[4])
    failed = [r.name for r in rows if r.failed]
    lines += ["", "All checks PASSED" if not failed else f"FAILED: {', '.join(failed)}"]
    return "\n".join(line.rstrip() for line in lines)


def _median_mae(samples: Tensor, future: Tensor) -> float:
    median = samples[0, 0].median(dim=-1).values
    return (median - future[: median.shape[0]]).abs().mean().item()


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
