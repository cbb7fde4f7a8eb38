"""Benchmark: upstream toto-ts (eager and torch.compile) against ours (eager and compiled).

One process, one run, full-size random weights in the published layout, so
the four runners see the same checkpoint files and inputs. Scenarios:

  S1  context 512,  horizon 8,   1,024 samples   (a backtest call)
  S2  context 2048, horizon 256, 256 samples
  S3  context 4096, horizon 512, mean only

    python scripts/bench.py [--device cuda] [--scenarios S1,S2] [--repeats 3] [--json out.json]

Needs the oracle (python scripts/install_oracle.py). Speed-ups compare the
steady-state ("later") call with upstream eager's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / ".oracle"), str(ROOT)]

from checkpoints import PUBLISHED_CONFIG, write_checkpoint  # noqa: E402

from toto import MaskedTimeseries, Toto, TotoForecaster  # noqa: E402
from toto.compile import default_mode  # noqa: E402
from toto.diagnostics import snapshot  # noqa: E402

SCENARIOS = {
    "S1": {"context": 512, "horizon": 8, "num_samples": 1024},
    "S2": {"context": 2048, "horizon": 256, "num_samples": 256},
    "S3": {"context": 4096, "horizon": 512, "num_samples": None},
}
RUNNERS = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled")


def load_upstream(checkpoint: Path, device: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from toto_upstream.data.util import dataset as upstream_dataset
        from toto_upstream.inference.forecaster import TotoForecaster as UpstreamForecaster
        from toto_upstream.model.toto import Toto as UpstreamToto
    model = UpstreamToto.load_from_checkpoint(str(checkpoint), map_location=device).model.eval()
    return model, UpstreamForecaster, upstream_dataset.MaskedTimeseries


def inputs(masked_cls, context: int, device: str):
    gen = torch.Generator().manual_seed(0)
    series = (100 + torch.randn(1, 1, context, generator=gen).cumsum(-1)).to(device)
    return masked_cls(
        series=series,
        padding_mask=torch.ones_like(series, dtype=torch.bool),
        id_mask=torch.zeros_like(series, dtype=torch.int),
        timestamp_seconds=torch.zeros_like(series, dtype=torch.int),
        time_interval_seconds=torch.full((1, 1), 900, dtype=torch.int, device=device),
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(forecast, device: str, repeats: int) -> dict:
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


def run(args) -> dict:
    device = args.device
    mode = args.compile_mode or default_mode(device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp), PUBLISHED_CONFIG, seed=0)
        ours = Toto.load_from_checkpoint(checkpoint, map_location=device).model
        theirs, UpstreamForecaster, UpstreamMasked = load_upstream(checkpoint, device)
    for name in args.scenarios:
        scenario = SCENARIOS[name]
        ours_in, theirs_in = inputs(MaskedTimeseries, scenario["context"], device), inputs(UpstreamMasked, scenario["context"], device)
        kwargs = {"prediction_length": scenario["horizon"], "num_samples": scenario["num_samples"]}
        if scenario["num_samples"]:
            kwargs["samples_per_batch"] = scenario["num_samples"]
        forecasters = {
            "upstream-eager": lambda: UpstreamForecaster(theirs).forecast(theirs_in, **kwargs),
            "upstream-compiled": lambda: compiled_upstream.forecast(theirs_in, **kwargs),
            "ours-eager": lambda: ours_eager.forecast(ours_in, **kwargs),
            "ours-compiled": lambda: ours_compiled.forecast(ours_in, **kwargs),
        }
        ours_eager = TotoForecaster(ours, torch_compile=False)
        ours_compiled = TotoForecaster(ours, torch_compile=True, compile_mode=mode)
        results[name] = {}
        for runner in args.runners:
            if runner == "upstream-compiled":  # the usual wrapper: compile the backbone module itself
                compiled_upstream = UpstreamForecaster(torch.compile(theirs, mode=mode))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[name][runner] = measure(forecasters[runner], device, args.repeats)
            print(f"{name} {runner}: {results[name][runner]}", file=sys.stderr, flush=True)
        ours_compiled.clear_buffers()
    return {"device": describe(device), "compile_mode": mode, "torch": torch.__version__, "results": results}


def describe(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scenarios", default="S1,S2,S3", type=lambda s: s.split(","))
    parser.add_argument("--runners", default=",".join(RUNNERS), type=lambda s: s.split(","))
    parser.add_argument("--repeats", type=int, default=2, help="steady-state calls after the first")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    unknown = [s for s in args.scenarios if s not in SCENARIOS] + [r for r in args.runners if r not in RUNNERS]
    if unknown:
        parser.error(f"unknown scenario or runner: {unknown}")
    report = run(args)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
