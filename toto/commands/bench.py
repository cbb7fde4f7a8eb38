"""``toto-compiled bench``: upstream toto-ts (eager and compiled) against ours (eager and compiled).

One process, one run, full-size random weights in the published layout, so every
runner sees the same checkpoint files and inputs. Scenarios:

  S1  context 512,  horizon 8,   1,024 samples   (a backtest call)
  S2  context 2048, horizon 256, 256 samples
  S3  context 4096, horizon 512, mean only

The upstream runners need ``toto_upstream`` importable (``python
scripts/install_oracle.py`` puts it in ``.oracle/``, found by ``--oracle``);
without it they are skipped and said to be. Speed-ups compare the steady-state
("later") call with upstream eager's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ..compile import default_mode
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
RUNNERS = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="benchmark upstream and ours, eager and compiled", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser)
    parser.add_argument("--scenarios", default="S1,S2,S3", type=_choices(SCENARIOS), help="default: %(default)s")
    parser.add_argument("--runners", default=",".join(RUNNERS), type=_choices(RUNNERS), help="default: all four")
    parser.add_argument("--repeats", type=int, default=2, help="steady-state calls after the first (default: 2)")
    parser.add_argument("--compile-mode", default=None, help="default: the device's default")
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
    report = benchmark(args.device, args.scenarios, runners, args.repeats, args.compile_mode)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def oracle_available(folder: Path) -> bool:
    if folder.is_dir() and str(folder.resolve()) not in sys.path:
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


def measure(forecast: Callable[[], Any], device: str, repeats: int) -> dict:
    torch._dynamo.reset()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = snapshot()
    times = []
    for i in range(repeats + 1):
        torch.manual_seed(i)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            forecast()
        sync(device)
        times.append(time.perf_counter() - start)
    stats = snapshot() - before
    later = statistics.median(times[1:])
    return {
        "first_s": times[0],
        "later_s": later,
        "compile_s": max(0.0, times[0] - later),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        **stats.as_dict(),
    }


def benchmark(device: str, scenarios: list[str], runners: list[str], repeats: int, compile_mode: str | None) -> dict:
    mode = compile_mode or default_mode(device)
    upstream = any(r.startswith("upstream") for r in runners)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), PUBLISHED_CONFIG, seed=0)
        ours = Toto.load_from_checkpoint(checkpoint, map_location=device).model
        if upstream:
            theirs, UpstreamForecaster, UpstreamMasked = load_upstream(checkpoint, device)
    results: dict[str, dict] = {}
    for name in scenarios:
        scenario = SCENARIOS[name]
        kwargs = {"prediction_length": scenario["horizon"], "num_samples": scenario["num_samples"]}
        if scenario["num_samples"]:
            kwargs["samples_per_batch"] = scenario["num_samples"]
        ours_in = inputs(MaskedTimeseries, scenario["context"], device)
        ours_eager = TotoForecaster(ours, torch_compile=False)
        ours_compiled = TotoForecaster(ours, torch_compile=True, compile_mode=mode)
        calls = {
            "ours-eager": lambda: ours_eager.forecast(ours_in, **kwargs),
            "ours-compiled": lambda: ours_compiled.forecast(ours_in, **kwargs),
        }
        if upstream:
            theirs_in = inputs(UpstreamMasked, scenario["context"], device)
            theirs_compiled = UpstreamForecaster(torch.compile(theirs, mode=mode))  # the usual wrapper
            calls["upstream-eager"] = lambda: UpstreamForecaster(theirs).forecast(theirs_in, **kwargs)
            calls["upstream-compiled"] = lambda: theirs_compiled.forecast(theirs_in, **kwargs)
        results[name] = {}
        for runner in runners:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[name][runner] = measure(calls[runner], device, repeats)
            print(f"{name} {runner}: {results[name][runner]}", file=sys.stderr, flush=True)
        ours_eager.clear_buffers()
        ours_compiled.clear_buffers()
    return {"device": describe(device), "compile_mode": mode, "torch": torch.__version__, "results": results}


def table(report: dict) -> str:
    lines = [f"device: {report['device']}; torch {report['torch']}; compile mode {report['compile_mode']}", ""]
    header = "| scenario | runner | first call s | later call s | compile s | peak MiB | speed-up | graphs | graph breaks | recompiles | cudagraph skips |"
    lines += [header, "|---" * (header.count("|") - 1) + "|"]
    for name, runners in report["results"].items():
        base = runners.get("upstream-eager", {}).get("later_s")
        for runner, r in runners.items():
            speed = f"{base / r['later_s']:.1f}x" if base else "n/a"
            peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "n/a"
            lines.append(
                f"| {name} | {runner} | {r['first_s']:.2f} | {r['later_s']:.3f} | {r['compile_s']:.1f} | {peak} | "
                f"{speed} | {r['graphs']} | {r['graph_breaks']} | {r['recompiles']} | {r['cudagraph_skips']} |"
            )
    return "\n".join(lines)

