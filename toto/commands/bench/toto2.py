"""``bench --family toto2``: Toto 2.0, ours (eager, compiled) against upstream's ``toto-2`` (eager,
and with its transformer compiled), on one random-weight checkpoint that both load.

Calls are interleaved (every runner once per round) so that drift on a shared machine
hits all runners alike; each row reports the first call (compiling) and the best and
median of the later ones.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ...checkpoints.reading import resolve_checkpoint
from ...compile.diagnostics import snapshot
from ...compile.policy import CompileSettings
from ...inference.toto2_forecaster import Toto2Forecaster
from ...toto2.config import PUBLISHED_TOTO2_CONFIGS
from ...toto2.loading import load_toto2, write_random_toto2
from ..common import sync

# Issue 22's CPU workloads: a 7.3M-parameter configuration and the 22m size.
SEVEN_M = {**PUBLISHED_TOTO2_CONFIGS["4m"], "d_model": 256, "d_ff": 688, "num_heads": 4, "num_groups": 4,
           "num_layers": 8, "layer_group_size": 4}  # fmt: skip


@dataclass(frozen=True)
class Workload:
    title: str
    config: dict
    batch: int
    variates: int
    context: int
    horizon: int


WORKLOADS = {
    "T1": Workload("7.3M config (d_model 256, 8 layers), 8 series x 2 variates x 2,048 -> 512",
                   SEVEN_M, 8, 2, 2048, 512),
    "T2": Workload("22m size, 64 series x 1 variate x 4,096 -> 256",
                   PUBLISHED_TOTO2_CONFIGS["22m"], 64, 1, 4096, 256),
    "T3": Workload("313m size, 16 series x 1 variate x 2,048 -> 768",
                   PUBLISHED_TOTO2_CONFIGS["313m"], 16, 1, 2048, 768),
}
RUNNERS = ("upstream-eager", "upstream-compiled", "ours-eager", "ours-compiled")


def upstream_model(folder: Path, oracle: Path, device: str):
    if str(oracle.resolve()) not in sys.path:
        sys.path.append(str(oracle.resolve()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from toto2.model import Toto2Model
    return Toto2Model.from_pretrained(str(folder)).to(device).eval()


def build_runners(folder: Path, names: list[str], oracle: Path, device: str, dtype: torch.dtype, block: int):
    """name -> call(values, observed, horizon)."""
    runners: dict[str, Callable] = {}
    for name in names:
        if name.startswith("upstream"):
            model = upstream_model(folder, oracle, device)
            if name == "upstream-compiled":  # what a user can do: compile the module forecast calls in its loop
                model.transformer = torch.compile(model.transformer)

            def call(values, observed, horizon, model=model):
                ids = torch.zeros(values.shape[:2], dtype=torch.long, device=values.device)
                inputs = {"target": values, "target_mask": observed, "series_ids": ids}
                return model.forecast(inputs, horizon, decode_block_size=block, has_missing_values=False)
        else:
            settings = CompileSettings.resolve(torch_compile=name == "ours-compiled", device=device)
            forecaster = Toto2Forecaster(load_toto2(resolve_checkpoint(folder), device, dtype), settings)

            def call(values, observed, horizon, forecaster=forecaster):
                return forecaster.forecast(values, observed, horizon, block)

        runners[name] = call
    return runners


def measure(workload: Workload, names: list[str], args: Any) -> dict[str, dict]:
    device, dtype = args.device, getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    values = 10 + torch.randn(workload.batch, workload.variates, workload.context, generator=generator).cumsum(-1)
    values, observed = values.to(device), torch.ones(values.shape, dtype=torch.bool, device=device)
    with tempfile.TemporaryDirectory() as folder:
        write_random_toto2(folder, workload.config, seed=0)
        runners = build_runners(Path(folder), names, args.oracle, device, dtype, args.decode_block_size)
        times: dict[str, list[float]] = {name: [] for name in runners}
        steady: dict[str, list] = {name: [] for name in runners}  # each later call's compile counters
        for round_ in range(args.repeats + 1):
            for name, call in runners.items():
                before = snapshot()
                sync(device)
                started = time.perf_counter()
                with torch.no_grad():
                    call(values, observed, workload.horizon)
                sync(device)
                times[name].append(time.perf_counter() - started)
                if round_:
                    steady[name].append(snapshot() - before)
    rows = {}
    for name, taken in times.items():
        later = taken[1:]
        rows[name] = {"first_s": taken[0], "best_s": min(later), "median_s": statistics.median(later),
                      "series_per_s": workload.batch / min(later),
                      "new_graphs_after_warmup": sum(stats.graphs for stats in steady[name]),
                      "recompiles_after_warmup": sum(stats.recompiles for stats in steady[name]),
                      "graph_breaks": sum(stats.graph_breaks for stats in steady[name])}  # fmt: skip
    base = rows.get("upstream-eager")
    for row in rows.values():
        row["speed_up"] = base["best_s"] / row["best_s"] if base else None
    return rows


def table(results: dict[str, dict[str, dict]], args: Any) -> str:
    lines = [
        f"Toto 2.0, {args.device}, ours in {args.dtype} (upstream float32), decode_block_size "
        f"{args.decode_block_size}, {args.repeats} interleaved rounds after the first",
        "",
        "| workload | runner | first s | best s | median s | series/s | speed-up vs upstream eager | "
        "new graphs / recompiles / breaks after warm-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, rows in results.items():
        for name, r in rows.items():
            speed = "" if r["speed_up"] is None else f"{r['speed_up']:.2f}x"
            lines.append(
                f"| {key} | {name} | {r['first_s']:.3f} | {r['best_s']:.3f} | {r['median_s']:.3f} | "
                f"{r['series_per_s']:.1f} | {speed} | {r['new_graphs_after_warmup']} / "
                f"{r['recompiles_after_warmup']} / {r['graph_breaks']} |"
            )
    lines += ["", *(f"{key}: {WORKLOADS[key].title}" for key in results)]
    return "\n".join(lines)


def run_toto2(args: Any) -> dict[str, dict[str, dict]]:
    names = [n for n in args.toto2_runners if n in RUNNERS]
    if any(n.startswith("upstream") for n in names) and not (args.oracle / "toto2").is_dir():
        names = [n for n in names if not n.startswith("upstream")]
        print(f"upstream runners skipped: no toto2 in {args.oracle} (python scripts/install_oracle.py)",
              file=sys.stderr)
    return {key: measure(WORKLOADS[key], names, args) for key in args.toto2_workloads}

