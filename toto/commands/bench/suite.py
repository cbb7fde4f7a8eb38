"""One benchmark run: every runner on every scenario, rows to stderr as they end, the report as a dict."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

from ...checkpoints.random_weights import write_checkpoint
from ...compile.policy import default_compile_prefill, default_mode
from ...config import PUBLISHED_CONFIG
from ...data.util.dataset import MaskedTimeseries
from ...model.toto import Toto
from ..common import describe
from .report import row, s4_speed_ups
from .runners import (
    forecast_kwargs,
    inputs,
    load_upstream,
    measure_runner,
    one_line,
    ours_runners,
    upstream_runners,
)
from .s4 import run_s4
from .settings import BATCHED, INTERRUPTED, S4_RUNNERS, SCENARIOS, S4Settings


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
        ours_toto = Toto.load_from_checkpoint(checkpoint, map_location=device, dtype=getattr(torch, dtype))
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


