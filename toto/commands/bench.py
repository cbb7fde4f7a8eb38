"""``toto-compiled bench``: upstream toto-ts (eager and compiled) against ours (eager and compiled).

One process, one run, full-size random weights in the published layout, so every
runner sees the same checkpoint files and inputs. Scenarios:

  S1  context 512,  horizon 8,   1,024 samples   (a backtest call)
  S2  context 2048, horizon 256, 256 samples
  S3  context 4096, horizon 512, mean only

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
import gc
import json
import signal
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..compile import default_compile_prefill, default_mode
from ..config import PUBLISHED_CONFIG
from ..data.util.dataset import MaskedTimeseries, masked_timeseries
from ..diagnostics import snapshot
from ..inference.forecaster import TotoForecaster
from ..model.toto import Toto
from ..random_checkpoint import write_checkpoint
from .common import add_device_argument, describe, device_unavailable, sync

SCENARIOS = {
    "S1": {"context": 512, "horizon": 8, "num_samples": 1024},
    "S2": {"context": 2048, "horizon": 256, "num_samples": 256},
    "S3": {"context": 4096, "horizon": 512, "num_samples": None},
}
RUNNERS = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled", "ours-compiled-prefill")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
INTERRUPTED = "interrupted"
UPSTREAM_DTYPE = "float32"  # upstream's forecaster is not meant for half precision: its baseline stays float32
COLUMNS = (
    "scenario", "runner", "dtype", "first call s", "later call s", "compile s", "peak MiB",
    "speed-up", "graphs", "graph breaks", "recompiles", "cudagraph skips",
)  # fmt: skip


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark upstream and ours, eager and compiled", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser)
    parser.add_argument("--scenarios", default="S1,S2,S3", type=_choices(SCENARIOS), help="default: %(default)s")
    parser.add_argument("--runners", default=",".join(RUNNERS), type=_choices(RUNNERS), help="default: all five")
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
    runners = args.runners
    if any(r.startswith("upstream") for r in runners) and not oracle_available(args.oracle):
        runners = [r for r in runners if not r.startswith("upstream")]
        print(
            f"upstream runners skipped: toto_upstream is not importable (looked in {args.oracle}; "
            "install it with python scripts/install_oracle.py)",
            file=sys.stderr,
        )
    report = benchmark(
        args.device, args.scenarios, runners, args.repeats, args.compile_mode, args.dtype, args.runner_timeout
    )
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if report["stopped"]:
        return 130 if report["stopped"] == INTERRUPTED else 1
    # Upstream failing (e.g. compiled under CUDA graphs) is a finding about the baseline; ours failing is an error.
    return 1 if any(r.startswith("ours") and "error" in row for r, row in _rows(report)) else 0


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
    """:func:`measure` with fresh compile state and memory peak; a failure or timeout becomes ``{"error": ...}``.

    Everything that touches the device is inside the ``try``: after a CUDA error every
    later CUDA call raises too, and each runner's row should say so rather than end the table.
    """
    try:
        with time_limit(timeout), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._dynamo.reset()  # every runner compiles from scratch (inductor's on-disk cache stays)
            reset_peak_memory(device)
            result = measure(runner.build(), runner.inputs, kwargs, device, repeats)
            result["peak_mib"] = peak_memory_mib(device)
    except RunnerTimeout:
        result = {"error": f"timed out after {timeout:g} s"}
    except Exception as err:  # noqa: BLE001 - any failure of one runner is reported in its row
        result = {"error": one_line(err)}
    result["dtype"] = runner.dtype
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
) -> dict:
    """Every runner on every scenario.

    Ctrl-C (or SIGINT from ``timeout``) or an error outside a runner ends it early; the
    report then holds what was measured and ``stopped`` says why.
    """
    mode = compile_mode or default_mode(device)
    upstream = any(r.startswith("upstream") for r in runners)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), PUBLISHED_CONFIG, seed=0)
        ours = Toto.load_from_checkpoint(checkpoint, map_location=device, dtype=DTYPES[dtype]).model
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
    try:
        for name in scenarios:
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
    return report


def _rows(report: dict) -> Iterator[tuple[str, dict]]:
    for runners in report["results"].values():
        yield from runners.items()


def row(scenario: str, runner: str, r: dict, base: dict | None) -> str:
    cells = [scenario, runner, r["dtype"]]
    if "error" in r:
        cells += [f"failed: {r['error']}"] + ["-"] * (len(COLUMNS) - len(cells) - 1)
    else:
        base_s = base.get("later_s") if base else None
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a"
        cells += [
            f"{r['first_s']:.2f}", f"{r['later_s']:.3f}", f"{r['compile_s']:.1f}", peak,
            f"{base_s / r['later_s']:.1f}x" if base_s else "n/a",
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
    lines += ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for name, runners in report["results"].items():
        for runner, r in runners.items():
            lines.append(row(name, runner, r, runners.get("upstream-eager")))
    if report["stopped"]:
        lines.append(f"(stopped early, rows missing: {report['stopped']})")
    return "\n".join(lines)
