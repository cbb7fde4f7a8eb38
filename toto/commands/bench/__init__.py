"""``toto-compiled bench``: upstream toto-ts (eager and compiled) against ours (eager and compiled).

The command line lives here and imports nothing heavy until :func:`run`; the work is in
:mod:`.runners` (S1-S3 and the guarded measurement), :mod:`.s4` (many series per call),
:mod:`.suite` (one whole run) and :mod:`.report` (tables). Names once in the single
``bench`` module stay importable from here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

from ..common import UsageError, add_device_argument, check_device
from .settings import (
    BATCHED,
    DTYPE_NAMES,
    INTERRUPTED,
    RUNNERS,
    SCENARIO_NAMES,
    S4Settings,
)

DESCRIPTION = """\
Benchmark upstream toto-ts (eager and compiled) against ours (eager and compiled):
one process, full-size random weights in the published layout, the same checkpoint
and inputs for every runner. Speed-ups compare each later call with upstream eager's."""
EPILOG = """\
scenarios:
  S1  context 512, horizon 8, 1,024 samples (a backtest call)
  S2  context 2048, horizon 256, 256 samples
  S3  context 4096, horizon 512, mean only
  S4  throughput over many series: 256 univariate series of 300-3,000 steps, horizon 64,
      128 samples, in series per second; only when named (upstream eager takes tens of
      minutes on a CPU). Upstream is called as AutoGluon calls it (batches of 16, left-padded,
      samples_per_batch 32); ours is TotoPipeline.predict on the whole list.

runners: upstream eager and compiled (torch.compile on its backbone); ours eager, compiled
(prefill compiled as the device's default says) and compiled with compile_prefill=True.
--dtype sets our model's dtype; upstream always runs in float32. A runner that fails or
runs past --runner-timeout gets its error in its row and the table goes on. The upstream
runners need toto_upstream (python scripts/install_oracle.py puts it in .oracle/); without
it they are skipped, and the run says so."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark upstream and ours, eager and compiled",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        "--dtype", choices=DTYPE_NAMES, default="float32", help="our model's dtype; upstream stays float32"
    )
    parser.add_argument("--repeats", type=int, default=2, help="steady-state calls after the first (default: 2)")
    parser.add_argument("--compile-mode", default=None, help="default: the device's default")
    parser.add_argument(
        "--runner-timeout", type=float, default=None, metavar="S",
        help="give up on a runner after S seconds (its row says so) and go on with the next",
    )  # fmt: skip
    parser.add_argument("--oracle", type=Path, default=Path(".oracle"), help="folder holding toto_upstream (default: .oracle)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    group = parser.add_argument_group("Toto 2.0 (--family toto2)")
    group.add_argument(
        "--family", choices=("toto1", "toto2"), default="toto1",
        help="toto2: Toto 2.0 workloads T1-T3 against upstream's toto-2 instead of S1-S4 (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--toto2-workloads", default="T1,T2", type=_choices(("T1", "T2", "T3")),
        help="T1 7.3M config 8x2x2048->512, T2 22m 64x1x4096->256, T3 313m 16x1x2048->768 (default: %(default)s)",
    )  # fmt: skip
    group.add_argument(
        "--toto2-runners", default="upstream-eager,ours-eager,ours-compiled",
        type=_choices(("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled")),
        help="default: %(default)s (upstream-compiled: torch.compile of its transformer)",
    )  # fmt: skip
    group.add_argument("--decode-block-size", type=int, default=768, help="both sides (default: %(default)s)")
    group = parser.add_argument_group("live streams (--streams)")
    group.add_argument(
        "--streams", action="store_true",
        help="instead of S1-S4: a stream's update (append a patch, forecast a patch) against a fresh forecast of the "
             "same context, and the throughput of many streams (Toto 1.0, ours only)",
    )  # fmt: skip
    group.add_argument("--stream-contexts", default="512,2048,4096", type=_positive_ints,
                       help="context lengths (default: %(default)s)")  # fmt: skip
    group.add_argument("--stream-rows", default="1,64", type=_positive_ints,
                       help="series per stream in the update-against-fresh rows (default: %(default)s)")  # fmt: skip
    group.add_argument("--stream-series", type=int, default=1000, metavar="N", help="throughput: streams (default: %(default)s)")
    group.add_argument("--stream-batch", type=int, default=250, metavar="B",
                       help="throughput: series per stream object (default: %(default)s)")  # fmt: skip
    group.add_argument("--stream-throughput-context", type=int, default=512, metavar="T",
                       help="throughput: context length (default: %(default)s)")  # fmt: skip
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


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _choices(allowed) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",")]
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(allowed)}")
        return names

    return parse


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    problem = s4_problem(args)
    if problem:
        raise UsageError(problem)
    if args.family == "toto2":
        return run_toto2_bench(args)
    if args.streams:
        return run_streams_bench(args)
    from ...config import PUBLISHED_CONFIG
    from .report import table, worst_exit
    from .runners import oracle_available
    from .s4 import s4_memory
    from .suite import benchmark

    config = _config(args) or PUBLISHED_CONFIG
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
    return worst_exit(report)


def _config(args: argparse.Namespace) -> dict | None:
    """--config's architecture, or None."""
    if not args.config:
        return None
    try:
        return json.loads(args.config.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--config {args.config}: {err}") from None


def run_toto2_bench(args: argparse.Namespace) -> int:
    from .toto2 import run_toto2, table

    results = run_toto2(args)
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps({"family": "toto2", "device": args.device, "dtype": args.dtype,
                                         "results": results}, indent=2))  # fmt: skip
    return 0


def run_streams_bench(args: argparse.Namespace) -> int:
    from ...config import PUBLISHED_CONFIG
    from .streams import run_streams, table

    for option in ("stream_series", "stream_batch", "stream_throughput_context"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be at least 1")
    results = run_streams(args, _config(args) or PUBLISHED_CONFIG)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"streams": results}, indent=2))
    return 0


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


# Where the names of the former single module live now; imported on first use (PEP 562).
_MOVED = {
    "report": ("worst_exit", "memory_line", "row", "s4_row", "s4_speed_ups", "s4_table", "table"),
    "runners": (
        "Runner", "RunnerTimeout", "forecast_kwargs", "guarded", "inputs", "load_upstream", "measure",
        "measure_runner", "one_line", "oracle_available", "ours_runners", "peak_memory_mib", "release",
        "reset_peak_memory", "time_limit", "upstream_runners",
    ),
    "s4": (
        "S4Runner", "autogluon_batches", "measure_s4", "memory_child", "ours_s4_runners", "process_max_rss_mib",
        "run_s4", "s4_memory", "s4_workload", "series_per_second", "upstream_s4_runner",
    ),
    "suite": ("benchmark",),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(f"{__name__}.{module}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
