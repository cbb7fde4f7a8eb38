"""``toto-compiled check``: eager and compiled forecasting side by side, then a TEST SUMMARY.

Same numbers (mean path; sample accuracy at equal seeds), not slower on CUDA (on a
CPU the speed-up is only reported), and compile health (:mod:`toto.compile.health`).
Without ``--model``: the published architecture with random weights; a Toto 2.0 ``--model``
gets the same checks on its quantiles. torch and the model load inside :func:`run`, so
``--help`` stays light.
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
from typing import TYPE_CHECKING, Any, Callable

from .. import __version__
from ..inference.capacity import bucket_capacity
from .common import UsageError, add_device_argument, check_device, describe, sync

if TYPE_CHECKING:
    from torch import Tensor

    from ..compile.health import Health
    from ..data.util.dataset import MaskedTimeseries
    from ..inference.forecaster import TotoForecaster

DESCRIPTION = (
    "Run one synthetic series through eager and compiled forecasting and print a TEST SUMMARY: "
    "same mean path and sample accuracy, the speed-up (judged on CUDA only), no graph breaks, "
    "no recompiles in steady state, no CUDA-graph skips. Exit code 0 when every check passes, 1 otherwise. "
    "Without --model it uses the published architecture with random weights: that checks equivalence "
    "and speed, not forecast quality."
)

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
        description=DESCRIPTION,
    )
    parser.add_argument("--quick", action="store_true", help="a short scenario: about 1-2 minutes on a 2-core CPU")
    parser.add_argument("--model", help="hub id or local checkpoint folder (default: random weights, published architecture)")
    add_device_argument(parser)
    parser.add_argument("--compile-mode", help="torch.compile mode (default: the device's default)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the synthetic series and the sampled calls (default: %(default)s)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    if args.model is not None:
        from .options import check_model  # it reads numpy: not at import, where --help would pay for it

        check_model(args.model)
    scenario = QUICK if args.quick else THOROUGH
    try:
        model, model_note = load_model(args.model, args.device)
    except (OSError, ValueError) as err:  # no such folder, hub failure, bad config or weights
        raise UsageError(f"cannot load model {args.model!r}: {err}") from None
    print(f"model: {model_note}", file=sys.stderr, flush=True)
    from ..toto2.model import Toto2Model

    if isinstance(model, Toto2Model):
        rows, mode = compare_toto2(model, scenario, args.device, args.compile_mode, args.seed)
        print(summary(rows, scenario, args.device, mode, model_note, args.seed, outputs="9 quantiles (Toto 2.0)"))
        return 1 if any(row.failed for row in rows) else 0
    from ..inference.forecaster import TotoForecaster

    eager = TotoForecaster(model.model, torch_compile=False)
    compiled = TotoForecaster(model.model, torch_compile=True, compile_mode=args.compile_mode)
    rows = compare(eager, compiled, scenario, args.device, args.seed)
    print(summary(rows, scenario, args.device, compiled.compile_settings.mode, model_note, args.seed))
    return 1 if any(row.failed for row in rows) else 0


def load_model(model_id: str | None, device: str) -> tuple[Any, str]:
    """A :class:`Toto` or a Toto 2.0 model (the family read from ``config.json``), and how to name it."""
    import torch

    from ..checkpoints.random_weights import write_checkpoint
    from ..config import PUBLISHED_CONFIG
    from ..families import load_family
    from ..model.toto import Toto

    if model_id is not None:
        return load_family(model_id, device=torch.device(device)).model.eval(), model_id
    with tempfile.TemporaryDirectory() as tmp:
        model = Toto.load_from_checkpoint(write_checkpoint(Path(tmp), PUBLISHED_CONFIG, seed=0), map_location=device)
    note = "published architecture with RANDOM weights (checks equivalence and speed, not forecast quality)"
    return model.eval(), note


def synthetic_series(length: int, seed: int) -> Tensor:
    """A 15-minute metric: daily and weekly cycles, a slow trend and noise, around 100."""
    import torch

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
    from ..data.util.dataset import masked_timeseries

    return masked_timeseries(series.reshape(1, 1, -1).to(device))


def first_runs(
    label: str, forecaster: TotoForecaster, inputs: MaskedTimeseries, scenario: Scenario, device: str, seed: int
) -> FirstRuns:
    """The first mean-path call and the first sampled call (compiling both decode steps, when compiled)."""
    import torch

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
    import torch

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


def health_check(
    compiled: TotoForecaster, series: Tensor, scenario: Scenario, device: str, warm_up: Callable[[], object]
) -> Health:
    """``warm_up()``, then the same calls and a shorter context in the same capacity bucket under
    ``fail_on_recompile``; a recompile there is reported, not raised."""
    from ..compile.health import steady_state

    shorter = same_bucket_shorter(series, scenario.horizon, compiled.model.patch_size)
    samples = {"num_samples": scenario.num_samples, "samples_per_batch": scenario.num_samples}
    calls = [
        call
        for context in (series, shorter)
        for call in (
            lambda c=context: compiled.forecast(masked(c, device), scenario.horizon),
            lambda c=context: compiled.forecast(masked(c, device), scenario.horizon, **samples),
        )
    ]
    return steady_state(calls, warmup=[warm_up], catch=True)


def same_bucket_shorter(series: Tensor, horizon: int, patch: int) -> Tensor:
    """The series less a few leading patches, as long as the KV-cache capacity bucket stays the same."""
    steps = -(-horizon // patch) - 1
    patches = -(-series.shape[-1] // patch)
    for drop in (3, 2, 1):
        if patches > drop and bucket_capacity(patches - drop + steps) == bucket_capacity(patches + steps):
            return series[drop * patch :]
    return series


def compare(eager: TotoForecaster, compiled: TotoForecaster, scenario: Scenario, device: str, seed: int) -> list[Row]:
    import torch

    full = synthetic_series(scenario.context + scenario.horizon, seed)
    series, future = full[: scenario.context], full[scenario.context :]
    inputs = masked(series, device)
    warm_runs: dict = {}

    def warm_up() -> None:  # the later calls count as warm-up too: a recompile there is counted (eager compiles nothing)
        warm_runs["fast"] = first_runs("compiled", compiled, inputs, scenario, device, seed)
        warm_runs["later"] = later_call_times({"eager": eager, "compiled": compiled}, inputs, scenario, device, seed)

    with torch.no_grad():
        plain = first_runs("eager", eager, inputs, scenario, device, seed)
        health = health_check(compiled, series, scenario, device, warm_up)
    fast, later = warm_runs["fast"], warm_runs["later"]

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
    rows.append(Row("graph breaks", "-", str(health.graph_breaks), _verdict(health.graph_breaks == 0)))
    what = "prefill, draws and decode steps" if compiled.compile_settings.compile_prefill else "one per decode-step kind"
    rows.append(Row("graphs compiled (warm-up)", "-", str(health.warm.graphs), "info", what))
    new = health.new_in_steady_state
    rows.append(Row("recompiles + new graphs (steady state)", "-", str(new), _verdict(new == 0 and not health.error),
                    health.error or "same calls again and a shorter context, fail_on_recompile"))
    if device == "cuda":
        skips = health.cudagraph_skips
        rows.append(Row("CUDA-graph skips", "-", str(skips), _verdict(skips == 0)))
        rows.append(Row("peak memory, MiB", f"{plain.peak_mib:.0f}", f"{fast.peak_mib:.0f}", "info"))
    else:
        rows.append(Row("peak memory (process RSS), MiB", "-", f"{_peak_rss_mib():.0f}", "info", "eager and compiled together"))
    return rows


def compare_toto2(model: Any, scenario: Scenario, device: str, mode: str | None, seed: int) -> tuple[list[Row], str]:
    """The check's rows for a Toto 2.0 model (its nine quantiles, compiled against eager; compile
    health across a shorter context of the same bucket; speed), and the compile mode used."""
    import torch

    from ..compile.health import steady_state
    from ..compile.policy import CompileSettings
    from ..inference.toto2_forecaster import DEFAULT_DECODE_BLOCK_SIZE, Toto2Forecaster

    settings = CompileSettings.resolve(torch_compile=True, compile_mode=mode, device=device)
    eager, compiled = Toto2Forecaster(model), Toto2Forecaster(model, settings)
    full = synthetic_series(scenario.context + scenario.horizon, seed)
    series, future = full[: scenario.context].reshape(1, 1, -1).to(device), full[scenario.context :]
    shorter = series[..., 3 * model.patch_size :]  # the same capacity bucket: the scenarios' contexts fill theirs

    def call(forecaster: Toto2Forecaster, context: Any = series) -> tuple[Any, float]:
        sync(device)
        start = time.perf_counter()
        quantiles = forecaster.forecast(context, torch.ones_like(context, dtype=torch.bool), scenario.horizon,
                                        DEFAULT_DECODE_BLOCK_SIZE)  # fmt: skip
        sync(device)
        return quantiles.cpu(), time.perf_counter() - start

    with torch.no_grad():
        plain, plain_s = call(eager)
        print(f"eager: first call {plain_s:.2f} s", file=sys.stderr, flush=True)
        first: dict = {}

        def warm_up() -> None:
            first["compiled"] = call(compiled)
            print(f"compiled: first call {first['compiled'][1]:.2f} s", file=sys.stderr, flush=True)

        health = steady_state([lambda: call(compiled), lambda: call(compiled, shorter)], warmup=[warm_up], catch=True)
        later = {"eager": [], "compiled": []}
        for _ in range(scenario.repeats):  # interleaved: a change of machine load hits both alike
            later["eager"].append(call(eager)[1])
            later["compiled"].append(call(compiled)[1])
    fast, fast_s = first["compiled"]
    diff = ((fast.double() - plain.double()).abs().max() / plain.double().abs().max()).item()
    error = (plain[4, 0, 0] - future[: scenario.horizon]).abs().mean().item()  # the median's MAE: information
    new = health.new_in_steady_state
    rows = [
        Row("compiled path active", "-", "yes" if compiled.compiled else "no", _verdict(compiled.compiled),
            compiled.compile_error or ""),  # fmt: skip
        Row("quantile difference (max rel.)", "-", f"{diff:.1e}", _verdict(diff <= MEAN_PATH_BOUND),
            f"<= {MEAN_PATH_BOUND:.0e}"),  # fmt: skip
        Row("median MAE vs held-out", f"{error:.4g}", "-", "info"),
        speed_row(min(later["eager"]), min(later["compiled"]), scenario.repeats, device),
        Row("first call incl. compile, s", f"{plain_s:.2f}", f"{fast_s:.2f}", "info"),
        Row("graph breaks", "-", str(health.graph_breaks), _verdict(health.graph_breaks == 0)),
        Row("graphs compiled (warm-up)", "-", str(health.warm.graphs), "info", "one per kind of decoding block"),
        Row("recompiles + new graphs (steady state)", "-", str(new), _verdict(new == 0 and not health.error),
            health.error or "same call again and a shorter context, fail_on_recompile"),  # fmt: skip
    ]
    if device == "cuda":
        rows.append(Row("CUDA-graph skips", "-", str(health.cudagraph_skips), _verdict(health.cudagraph_skips == 0)))
    else:
        rows.append(Row("peak memory (process RSS), MiB", "-", f"{_peak_rss_mib():.0f}", "info"))
    return rows, settings.mode


def speed_row(eager_s: float, compiled_s: float, repeats: int, device: str) -> Row:
    """Later-call times and the speed-up: judged on CUDA, only reported on a CPU."""
    name = f"later call, s (min of {repeats}, interleaved)"
    speedup = eager_s / compiled_s
    times = (f"{eager_s:.3f}", f"{compiled_s:.3f}")
    if device == "cuda":
        return Row(name, *times, _verdict(speedup >= MIN_CUDA_SPEEDUP), f"speed-up {speedup:.2f}x, >= {MIN_CUDA_SPEEDUP}x")
    return Row(name, *times, "info", f"speed-up {speedup:.2f}x (not judged on CPU: compute-bound at this size)")


def summary(
    rows: list[Row], scenario: Scenario, device: str, mode: str, model_note: str, seed: int, outputs: str = ""
) -> str:
    import torch

    where = describe(device)
    lines = [
        "",
        "TEST SUMMARY",
        f"toto-compiled {__version__}, torch {torch.__version__}, {where}, compile mode {mode}",
        f"model: {model_note}",
        f"series: synthetic 15-minute metric, context {scenario.context}, horizon {scenario.horizon}, "
        f"{outputs or f'{scenario.num_samples} samples'}, seed {seed}",
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
